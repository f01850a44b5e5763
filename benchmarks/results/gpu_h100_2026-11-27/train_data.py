import sys, numpy as np, nibabel as nib
from pathlib import Path
root = Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True); rng = np.random.default_rng(0)
lines = ["case_id,image,mask,label,split"]
for i in range(6):
    d = np.zeros((48, 48, 8), np.float32); d[6:42, 6:42] = rng.random((36, 36, 8)) * 100 + 100
    lab = np.zeros(d.shape, np.uint8)
    if i % 2 == 0: d[16:26, 16:26, 3:5] = 400; lab[16:26, 16:26, 3:5] = 1
    nib.save(nib.Nifti1Image(d, np.eye(4)), root / f"v{i}.nii.gz"); nib.save(nib.Nifti1Image(lab, np.eye(4)), root / f"v{i}_seg.nii.gz")
    lines.append(f"v{i},v{i}.nii.gz,v{i}_seg.nii.gz,{int(i % 2 == 0)},{'train' if i < 4 else 'valid'}")
(root / "manifest.csv").write_text("\n".join(lines) + "\n")
