# ruff: noqa: E402  (sklearn warnings are silenced before it is imported)
"""Do the image tokens carry the sprite's colours? Linear (logistic) probes of color1/color2 on memory images:
raw pixels, pre-LM image tokens, post-LM hidden states at image positions (image alone in the prompt).
Train on seen-subject + anonymous docs, test on unseen-subject docs."""

import warnings

warnings.filterwarnings("ignore")
import io
import json
import time

import numpy as np
import torch
from PIL import Image

from vimi.config import Settings
from vimi.io import lance_io
from vimi.train.stage1 import Stage1Task

torch.manual_seed(0)
torch.set_num_threads(2)
s = Settings.load()
task = Stage1Task(s.params, s.path("augmented"), s.path("videos"), s.model_path("encoder"))
mem = (
    lance_io.open_dataset(s.path("memory"))
    .to_table(columns=["image", "doc_type", "subject_split", "color1", "color2", "shape"])
    .to_pylist()
)
mem = [r for r in mem if r["color1"]]
print(
    len(mem),
    {k: sum(r["subject_split"] == k for r in mem) for k in ("seen", "unseen", None, "")},
    {r["doc_type"] for r in mem},
)
size = task.encoder.vision.config.image_size
imgs = [np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB").resize((size, size))) for r in mem]
t0 = time.time()
pre, post = [], []
with torch.no_grad():
    for i in range(0, len(imgs), 64):
        b = imgs[i : i + 64]
        tok = task.encoder.image_tokens(b).float()  # B×n×D
        pre.append(tok.flatten(1))
        out = task.encoder([[im] for im in b]).hidden_states.float()  # [CLS] img.. [SEP]
        n = tok.shape[1]
        post.append(out[:, 1 : 1 + n].flatten(1))
pre = torch.cat(pre).numpy()
post = torch.cat(post).numpy()
pix = np.stack(imgs).reshape(len(imgs), -1).astype(np.float32) / 255
print("encoded", time.time() - t0, pre.shape, post.shape)
test = np.array([r["subject_split"] == "unseen" for r in mem])
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

res = {}
q = (np.stack(imgs).reshape(len(imgs), -1, 3) // 64).astype(np.int64)
hist = np.stack([np.bincount(a[:, 0] * 16 + a[:, 1] * 4 + a[:, 2], minlength=64) for a in q]).astype(np.float32)
for name, X in (("rgb_hist", hist), ("pixels", pix), ("image_tokens", pre), ("lm_hidden", post)):
    X = StandardScaler().fit(X[~test]).transform(X)
    for attr in ("color1", "color2", "shape"):
        y = np.array([r[attr] for r in mem])
        clf = LogisticRegression(max_iter=300, C=0.1).fit(X[~test], y[~test])
        res[f"{name}.{attr}"] = (round(clf.score(X[~test], y[~test]), 3), round(clf.score(X[test], y[test]), 3))
        print(name, attr, res[f"{name}.{attr}"], flush=True)
print(json.dumps(res))
