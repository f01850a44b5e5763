"""GPU checks (issues 19 and 16): release weights at 518 on CUDA, parity, timing, run and train on CUDA."""
import json, os, subprocess, sys, time, warnings
from pathlib import Path
import numpy as np, torch, open_clip
warnings.simplefilter("ignore")
import logging; logging.disable(logging.WARNING)
OUT = Path(os.environ["OUT"]); G = Path(".gpu")
sys.path.insert(0, str(Path.cwd()))
from aaclip_med.model import create_model
from tests.model.test_release_formats import torchscript_release
sys.path.insert(0, str(G)); import make_inputs as mk
print("torch", torch.__version__, torch.cuda.get_device_name(0), "open_clip", open_clip.__version__, flush=True)
ref = dict(np.load(G / "openai_format_518.npz"))
wd = Path("/tmp/wd"); wd.mkdir(exist_ok=True)
torch.manual_seed(7)
clip = open_clip.create_model("ViT-L-14-336", pretrained=None)
state = {k: v.half() if v.is_floating_point() else v for k, v in clip.state_dict().items()}; del clip
print("fingerprint ok", np.allclose(mk.fingerprint(state), ref["fingerprint"], rtol=1e-6), flush=True)
torchscript_release(state, wd / "ViT-L-14-336px.pt", 336)
text, image = mk.adapter_state_dicts()
torch.save({"text_adapter": text}, wd / "text_adapter.pth"); torch.save({"image_adapter": image}, wd / "image_adapter_20.pth")
os.environ["AACLIP_MED_WEIGHTS_DIR"] = str(wd)
x = torch.from_numpy(ref["x"])
res = {}
for prec in ("fp32", "fp16"):  # fp32: our _autocast turns TF32 convolutions off
    t = time.time()
    m = create_model("aaclip-vitl14-336", adapter_weights=wd, device="cuda", precision=prec)
    build = time.time() - t
    out = m.score_slices(x.cuda(), "reference")
    a, b = out.maps.float().cpu().numpy().ravel(), ref["anomaly_map"].ravel()
    res[prec] = dict(build_s=round(build, 1), max_abs_err=float(np.abs(a - b).max()), r=float(np.corrcoef(a, b)[0, 1]),
                     det_err=float(abs(out.det_score.float().cpu().numpy() - ref["det_score"]).max()))
    xb = x.repeat(8, 1, 1, 1).cuda()
    for _ in range(2): m.score_slices(xb, "reference")
    torch.cuda.synchronize(); t = time.time()
    for _ in range(3): m.score_slices(xb, "reference")
    torch.cuda.synchronize(); res[prec]["s_per_slice_b8"] = round((time.time() - t) / 24, 4)
    print(prec, res[prec], flush=True)
    del m; torch.cuda.empty_cache()
# tf32 off for the fp32 parity number
torch.backends.cudnn.allow_tf32 = False; torch.backends.cuda.matmul.allow_tf32 = False
m = create_model("aaclip-vitl14-336", adapter_weights=wd, device="cuda", precision="fp32")
out = m.score_slices(x.cuda(), "reference")
res["fp32_no_tf32_max_abs_err"] = float(np.abs(out.maps.cpu().numpy() - ref["anomaly_map"]).max())
print("fp32 without tf32", res["fp32_no_tf32_max_abs_err"], flush=True)
(OUT / "gpu_release.json").write_text(json.dumps(res, indent=2))
