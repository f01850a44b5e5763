// aaclip-med slice viewer: a small canvas viewer over the arrays of aaclip_med/report/viewer.py (no library).
// Channels are zlib-compressed uint8 arrays (n_slices, rows, cols) in display orientation, inflated here with
// DecompressionStream. Heat codes: 0 not scored, 1 at or below the colour floor, 2..255 floor..top (map units).
(function () {
  "use strict";
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }

  function start() {
    var root = document.getElementById("viewer");
    var node = document.getElementById("viewer-data");
    if (!root || !node) { return; }
    var D = JSON.parse(node.textContent);
    var n = D.shape[0], R = D.shape[1], C = D.shape[2];
    var $ = function (id) { return document.getElementById(id); };
    var canvas = $("v-canvas"), info = $("v-info"), slider = $("v-slice"), view = $("v-view");
    var ctx = canvas.getContext("2d");
    var off = document.createElement("canvas"), offCtx = off.getContext("2d");
    var lut = [];
    for (var i = 0; i < 256; i++) { lut.push(parseInt(D.heat_lut.substr(6 * i, 6), 16)); }
    var ch = {}, grey = new Uint8Array(256);
    var rising = D.positions_mm[n - 1] >= D.positions_mm[0];  // slice index grows towards superior
    var best = 0;
    D.scores.forEach(function (s, k) { if (D.scored[k] && (!D.scored[best] || s > D.scores[best])) { best = k; } });
    var state = { view: "axial", index: { axial: best, coronal: R >> 1, sagittal: C >> 1 } };

    function inflate(b64) {
      var bin = atob(b64), bytes = new Uint8Array(bin.length);
      for (var j = 0; j < bin.length; j++) { bytes[j] = bin.charCodeAt(j); }
      var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
      return new Response(stream).arrayBuffer().then(function (buf) { return new Uint8Array(buf); });
    }

    function setWindow(lo, hi) {
      var a = D.image_range[0], b = D.image_range[1];
      for (var v = 0; v < 256; v++) {
        var x = a + (b - a) * v / 255;
        grey[v] = Math.max(0, Math.min(255, Math.round(255 * (x - lo) / Math.max(hi - lo, 1e-9))));
      }
      $("v-window-text").textContent = "[" + lo.toFixed(0) + ", " + hi.toFixed(0) + "] " + D.unit;
    }

    function windowFromSliders() {
      var level = +$("v-level").value, width = +$("v-width").value;
      setWindow(level - width / 2, level + width / 2);
    }

    function pickPreset() {
      var w = D.windows[+$("v-window").value];
      $("v-level").value = String((w.lo + w.hi) / 2);
      $("v-width").value = String(w.hi - w.lo);
      setWindow(w.lo, w.hi);
    }

    // the plane of the current view: size, physical pixel size (mm) and the voxel offset of each pixel
    function plane() {
      var k = state.index[state.view], sp = D.spacing_mm;
      var slab = function (y) { return rising ? n - 1 - y : y; };  // superior at the top
      if (state.view === "coronal") {
        return { w: C, h: n, pw: sp[2], ph: sp[0], at: function (x, y) { return slab(y) * R * C + k * C + x; } };
      }
      if (state.view === "sagittal") {
        return { w: R, h: n, pw: sp[1], ph: sp[0], at: function (x, y) { return slab(y) * R * C + x * C + k; } };
      }
      return { w: C, h: R, pw: sp[2], ph: sp[1], at: function (x, y) { return k * R * C + y * C + x; } };
    }

    function edge(mask, p, x, y) {
      if (!mask[p.at(x, y)]) { return false; }
      return x === 0 || y === 0 || x === p.w - 1 || y === p.h - 1 || !mask[p.at(x - 1, y)] ||
        !mask[p.at(x + 1, y)] || !mask[p.at(x, y - 1)] || !mask[p.at(x, y + 1)];
    }

    function render() {
      var p = plane(), img = offCtx.createImageData(p.w, p.h), px = img.data;
      var showHeat = $("v-heat").checked, showMask = $("v-mask").checked;
      var showRef = ch.reference && $("v-ref") && $("v-ref").checked;
      var opacity = +$("v-opacity").value / 100;
      for (var y = 0; y < p.h; y++) {
        for (var x = 0; x < p.w; x++) {
          var o = p.at(x, y), g = grey[ch.image[o]], r = g, gg = g, b = g, q = 4 * (y * p.w + x);
          var code = ch.heat[o];
          if (showHeat && code > 1) {
            var t = (code - 2) / 253, c = lut[Math.round(t * 255)], a = Math.min(1, opacity * (0.4375 + 0.5625 * t));
            r = g + a * ((c >> 16) - g); gg = g + a * (((c >> 8) & 255) - g); b = g + a * ((c & 255) - g);
          }
          if (showRef && edge(ch.reference, p, x, y)) { r = 102; gg = 255; b = 102; }
          if (showMask && edge(ch.mask, p, x, y)) { r = 0; gg = 229; b = 255; }
          px[q] = r; px[q + 1] = gg; px[q + 2] = b; px[q + 3] = 255;
        }
      }
      off.width = p.w; off.height = p.h;
      offCtx.putImageData(img, 0, 0);
      var scale = Math.min(560 / (p.w * p.pw), 560 / (p.h * p.ph));
      canvas.width = Math.max(1, Math.round(p.w * p.pw * scale));
      canvas.height = Math.max(1, Math.round(p.h * p.ph * scale));
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
      labels();
      describe();
    }

    function labels() {
      var names = { axial: ["A", "P", "R", "L"], coronal: ["S", "I", "R", "L"], sagittal: ["S", "I", "A", "P"] };
      var l = names[state.view], w = canvas.width, h = canvas.height;
      ctx.font = "bold 14px sans-serif"; ctx.fillStyle = "#ffd54f"; ctx.textAlign = "center";
      ctx.fillText(l[0], w / 2, 16); ctx.fillText(l[1], w / 2, h - 6);
      ctx.fillText(l[2], 10, h / 2); ctx.fillText(l[3], w - 10, h / 2);
      if (state.view === "axial" && !D.scored[state.index.axial]) {
        ctx.font = "bold 22px sans-serif"; ctx.fillStyle = "rgba(255,255,255,0.85)";
        ctx.fillText("not scored", w / 2, h / 2);
      }
    }

    function describe() {
      var k = state.index[state.view], text;
      if (state.view === "axial") {
        var s = D.scores[k];
        text = "slice " + k + " of " + (n - 1) + " \u00b7 " + D.axis_name + " = " + D.positions_mm[k].toFixed(1) +
          " mm \u00b7 " + (D.scored[k] ? "score " + s.toPrecision(4) + (s > D.threshold ? " (above the threshold)" : "")
            : "not scored");
      } else {
        var pos = state.view === "coronal" ? D.row_positions_mm[k] : D.col_positions_mm[k];
        text = state.view + " plane " + k + " of " + ((state.view === "coronal" ? R : C) - 1) + " \u00b7 " +
          pos.toFixed(1) + " mm";
      }
      info.textContent = text;
      root.setAttribute("data-view", state.view);
      root.setAttribute("data-index", String(k));
      var cursor = $("curve-cursor");
      if (cursor) { cursor.setAttribute("visibility", state.view === "axial" ? "visible" : "hidden"); }
      if (cursor && state.view === "axial") { cursor.setAttribute("x1", xOf(k)); cursor.setAttribute("x2", xOf(k)); }
    }

    function size() { return state.view === "axial" ? n : state.view === "coronal" ? R : C; }

    function go(k) {
      state.index[state.view] = Math.max(0, Math.min(size() - 1, k));
      slider.value = String(state.index[state.view]);
      render();
    }

    function setView(name) {
      state.view = name;
      view.value = name;
      slider.max = String(size() - 1);
      go(state.index[name]);
    }

    // the score curve: a click jumps to that slice, a cursor line shows the current one
    var curve = document.querySelector("#slice-scores svg");
    function xOf(k) {
      var x0 = +curve.getAttribute("data-x0"), x1 = +curve.getAttribute("data-x1");
      return String(x0 + (x1 - x0) * k / Math.max(n - 1, 1));
    }
    if (curve && curve.hasAttribute("data-x0")) {
      var line = document.createElementNS("http://www.w3.org/2000/svg", "line");
      line.setAttribute("id", "curve-cursor");
      line.setAttribute("y1", curve.getAttribute("data-y0"));
      line.setAttribute("y2", curve.getAttribute("data-y1"));
      line.setAttribute("stroke", "#2ca02c");
      line.setAttribute("stroke-width", "2");
      curve.appendChild(line);
      curve.style.cursor = "pointer";
      curve.addEventListener("click", function (event) {
        var pt = curve.createSVGPoint();
        pt.x = event.clientX; pt.y = event.clientY;
        var local = pt.matrixTransform(curve.getScreenCTM().inverse());
        var x0 = +curve.getAttribute("data-x0"), x1 = +curve.getAttribute("data-x1");
        setView("axial");
        go(Math.round((local.x - x0) / (x1 - x0) * (n - 1)));
      });
    }

    function colourBar() {
      var bar = $("v-colourbar"), c = bar.getContext("2d"), w = bar.width, h = 14;
      for (var x = 0; x < w; x++) {
        var v = lut[Math.round(255 * x / (w - 1))];
        c.fillStyle = "#" + ("00000" + v.toString(16)).slice(-6);
        c.fillRect(x, 0, 1, h);
      }
      var lo = D.heat_scale[0], hi = D.heat_scale[1], tx = (D.threshold - lo) / (hi - lo) * (w - 1);
      c.fillStyle = "#00e5ff"; c.fillRect(Math.round(tx) - 1, 0, 3, h + 4);
      c.font = "12px sans-serif"; c.fillStyle = "#222";
      c.textAlign = "left"; c.fillText(lo.toPrecision(3), 0, h + 16);
      c.textAlign = "right"; c.fillText(hi.toPrecision(3), w, h + 16);
      c.textAlign = "center"; c.fillText("threshold " + D.threshold.toPrecision(4), tx, h + 16);
    }

    function wire() {
      D.windows.forEach(function (w, k) { $("v-window").add(new Option(w.name, String(k))); });
      var span = D.image_range[1] - D.image_range[0];
      $("v-level").min = String(D.image_range[0]); $("v-level").max = String(D.image_range[1]);
      $("v-level").step = String(span / 255);
      $("v-width").min = String(span / 255); $("v-width").max = String(span); $("v-width").step = String(span / 255);
      if (!D.reformat) { ["coronal", "sagittal"].forEach(function (v) { view.querySelector("[value=" + v + "]").disabled = true; }); }
      view.addEventListener("change", function () { setView(view.value); });
      slider.addEventListener("input", function () { go(+slider.value); });
      $("v-window").addEventListener("change", function () { pickPreset(); render(); });
      ["v-level", "v-width"].forEach(function (id) { $(id).addEventListener("input", function () { windowFromSliders(); render(); }); });
      ["v-heat", "v-mask", "v-ref", "v-opacity"].forEach(function (id) { if ($(id)) { $(id).addEventListener("input", render); } });
      canvas.addEventListener("wheel", function (event) {
        event.preventDefault();
        go(state.index[state.view] + (event.deltaY > 0 ? -1 : 1));
      }, { passive: false });
      root.addEventListener("keydown", function (event) {
        var steps = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
        var own = event.target.tagName === "SELECT" || (event.target.tagName === "INPUT" && event.target.type === "range");
        if (!(event.key in steps) || own) { return; }  // sliders and menus keep their own arrow keys
        event.preventDefault();
        go(state.index[state.view] + steps[event.key]);
      });
      colourBar();
      pickPreset();
      setView("axial");
    }

    if (typeof DecompressionStream === "undefined") {
      info.textContent = "This browser cannot inflate the inlined slices (no DecompressionStream); use a current browser.";
      return;
    }
    Promise.all(Object.keys(D.channels).map(function (name) {
      return inflate(D.channels[name]).then(function (arr) { ch[name] = arr; });
    })).then(function () {
      wire();
      root.setAttribute("data-ready", "true");
    }).catch(function (err) {
      info.textContent = "The viewer could not load its data: " + err;
      root.setAttribute("data-ready", "error");
    });
  }
})();
