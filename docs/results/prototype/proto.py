"""Prototype (outside sslcli): SimCLR or MoCo-v2 on in-memory planted scenes, object kNN on res5 (docs/results/README.md)."""
import argparse, json, time, math
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from torchvision.ops import roi_align
import sslcli.data.scenes.planted as P
from sslcli.models.backbone import build_backbone
from sslcli.models.queue import mean_pairwise_cosine

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=1000); ap.add_argument("--nval", type=int, default=250)
ap.add_argument("--size", type=int, default=96); ap.add_argument("--crop", type=int, default=48)
ap.add_argument("--objs", default="3,6"); ap.add_argument("--radius", default="0.14,0.26")
ap.add_argument("--bg", default="photo"); ap.add_argument("--colour", default="wide")
ap.add_argument("--steps", default="0,150,300"); ap.add_argument("--bs", type=int, default=128)
ap.add_argument("--lr", type=float, default=0.5); ap.add_argument("--tau", type=float, default=0.2)
ap.add_argument("--scale", default="0.2,1.0"); ap.add_argument("--hue", type=float, default=0.1)
ap.add_argument("--gray", type=float, default=0.2); ap.add_argument("--jit", type=float, default=0.4); ap.add_argument("--blur", type=float, default=0.0); ap.add_argument("--nobn", action="store_true"); ap.add_argument("--width", type=int, default=16)
ap.add_argument("--seed", type=int, default=0); ap.add_argument("--m", type=float, default=0.99); ap.add_argument("--K", type=int, default=1024); ap.add_argument("--groups", type=int, default=8); ap.add_argument("--ckpts", default="", help="comma-separated sslcli checkpoints: evaluate them and exit (no training)"); ap.add_argument("--method", default="simclr")
a = ap.parse_args()
torch.manual_seed(a.seed)
P.OBJECTS_PER_IMAGE = tuple(int(x) for x in a.objs.split(","))
P.RADIUS_FRACTION = tuple(float(x) for x in a.radius.split(","))
if a.bg == "plain":
    def bg(rng, h, w):
        base = rng.uniform(0, 255, size=3)
        img = np.broadcast_to(base, (h, w, 3)).astype(np.float32).copy()
        return img + rng.normal(0, 10, size=(h, w, 3)).astype(np.float32)
    P.background = bg
if a.colour.startswith("palette"):
    k = int(a.colour[7:] or 4)
    prng = np.random.default_rng(123)
    pal = [P.instance_colours(prng) for _ in range(k)]
    P.instance_colours = lambda rng: pal[rng.integers(k)].copy()
elif a.colour == "gray":
    def gc(rng):
        while True:
            l = rng.uniform(0, 255, size=2)
            if abs(l[0] - l[1]) > 70:
                return np.repeat(l[:, None], 3, 1).astype(np.float32)
    P.instance_colours = gc


def make(n, seed, rules):
    rng = np.random.default_rng(seed)
    imgs, objs = [], []
    for i in range(n):
        sc = P.render_planted_scene(rng, a.size, rules)
        h, w = sc.image.shape[:2]
        im = torch.from_numpy(np.ascontiguousarray(sc.image)).permute(2, 0, 1)
        im = F.interpolate(im[None].float(), size=(a.size, a.size), mode="bilinear", align_corners=False)[0]
        imgs.append(im.clamp(0, 255).to(torch.uint8))
        for o in sc.objects:
            ys, xs = np.nonzero(o.visible)
            if len(xs) < 24:
                continue
            b = [xs.min() * a.size / w, ys.min() * a.size / h, (xs.max() + 1) * a.size / w, (ys.max() + 1) * a.size / h]
            if min(b[2] - b[0], b[3] - b[1]) < 8:
                continue
            objs.append((i, o.category_id - 1, b))
    return torch.stack(imgs), objs


t0 = time.time()
tr_img, tr_obj = make(a.n, 1, None)
va_img, va_obj = make(a.nval, 2, None)
print(f"data {time.time()-t0:.0f}s objs {len(tr_obj)} {len(va_obj)}", flush=True)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
smin, smax = (float(x) for x in a.scale.split(","))


def rrc_boxes(b, S):
    area = torch.empty(b).uniform_(smin, smax) * S * S
    logr = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3))
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=S); h = torch.sqrt(area / r).clamp(max=S)
    x0 = torch.rand(b) * (S - w); y0 = torch.rand(b) * (S - h)
    return torch.stack([torch.arange(b).float(), x0, y0, x0 + w, y0 + h], 1)


def gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def rgb2hsv(x):
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    mx, _ = x.max(1); mn, _ = x.min(1); d = mx - mn
    h = torch.zeros_like(mx)
    dd = d.clamp(min=1e-8)
    h = torch.where(mx == r, ((g - b) / dd) % 6, h)
    h = torch.where(mx == g, (b - r) / dd + 2, h)
    h = torch.where(mx == b, (r - g) / dd + 4, h)
    h = torch.where(d == 0, torch.zeros_like(h), h) / 6
    s = torch.where(mx > 0, d / mx.clamp(min=1e-8), torch.zeros_like(mx))
    return torch.stack([h, s, mx], 1)


def hsv2rgb(x):
    h, s, v = x[:, 0], x[:, 1], x[:, 2]
    i = torch.floor(h * 6) % 6; f = h * 6 - torch.floor(h * 6)
    p = v * (1 - s); q = v * (1 - f * s); t = v * (1 - (1 - f) * s)
    i = i.long()
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i[:, None]).squeeze(1)
    g = torch.stack([t, v, v, q, p, p], 1).gather(1, i[:, None]).squeeze(1)
    bb = torch.stack([p, p, t, v, v, q], 1).gather(1, i[:, None]).squeeze(1)
    return torch.stack([r, g, bb], 1)


def view(x):
    b = x.shape[0]
    y = roi_align(x.float(), rrc_boxes(b, a.size), (a.crop, a.crop), 1.0, 2, True) / 255
    flip = torch.rand(b) < 0.5
    y[flip] = y[flip].flip(-1)
    jit = torch.rand(b) < 0.8
    if jit.any():
        z = y[jit]; m = z.shape[0]
        bf = torch.empty(m, 1, 1, 1).uniform_(1 - a.jit, 1 + a.jit); z = (z * bf).clamp(0, 1)
        cf = torch.empty(m, 1, 1, 1).uniform_(1 - a.jit, 1 + a.jit); mu = gray(z).mean((2, 3), keepdim=True)
        z = (cf * z + (1 - cf) * mu).clamp(0, 1)
        sf = torch.empty(m, 1, 1, 1).uniform_(1 - a.jit, 1 + a.jit); z = (sf * z + (1 - sf) * gray(z)).clamp(0, 1)
        if a.hue > 0:
            hsv = rgb2hsv(z); hsv[:, 0] = (hsv[:, 0] + torch.empty(m, 1, 1).uniform_(-a.hue, a.hue)) % 1
            z = hsv2rgb(hsv)
        y[jit] = z
    if a.blur > 0:
        from torchvision.transforms.v2.functional import gaussian_blur
        for j in torch.nonzero(torch.rand(b) < a.blur).flatten().tolist():
            sg = float(torch.empty(1).uniform_(0.1, 2.0))
            y[j] = gaussian_blur(y[j], [5, 5], [sg, sg])
    g = torch.rand(b) < a.gray
    y[g] = gray(y[g]).expand(-1, 3, -1, -1)
    return (y * 255 - MEAN) / STD


bb = build_backbone("resnet18", a.width)
proj = nn.Sequential(nn.Linear(bb.out_channels, 512), nn.Identity() if a.nobn else nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 128))
params = list(bb.parameters()) + list(proj.parameters())
steps = [int(s) for s in a.steps.split(",")]
total = max(steps)
lr = a.lr * a.bs / 256
import copy
bb_k = copy.deepcopy(bb); proj_k = copy.deepcopy(proj)
for p_ in list(bb_k.parameters()) + list(proj_k.parameters()): p_.requires_grad_(False)
queue = F.normalize(torch.randn(128, a.K), dim=0); qptr = 0
opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)


@torch.no_grad()
def evaluate():
    bb.eval()
    out = {}
    def crops(img, objs):
        feats = []
        for s in range(0, len(objs), 256):
            chunk = objs[s:s + 256]
            boxes = []
            for j, (i, c, b) in enumerate(chunk):
                w, h = b[2] - b[0], b[3] - b[1]; m = 0.1
                boxes.append([j, b[0] - m * w, b[1] - m * h, b[2] + m * w, b[3] + m * h])
            ims = img[[i for i, _, _ in chunk]].float()
            y = roi_align(ims, torch.tensor(boxes, dtype=torch.float), (a.crop, a.crop), 1.0, 2, True)
            feats.append(bb((y - MEAN) / STD))
        return F.normalize(torch.cat(feats), dim=1)
    def rois(img, objs, R):
        feats = []
        idx = sorted({i for i, _, _ in objs}); pos = {i: k for k, i in enumerate(idx)}
        allf = []
        for s in range(0, len(idx), 128):
            x = F.interpolate(img[idx[s:s + 128]].float(), size=(R, R), mode="bilinear", align_corners=False)
            allf.append(bb.forward_map((x - MEAN) / STD))
        fm = torch.cat(allf)
        sc = R / a.size
        boxes = torch.tensor([[pos[i], b[0] * sc, b[1] * sc, b[2] * sc, b[3] * sc] for i, _, b in objs], dtype=torch.float)
        f = roi_align(fm, boxes, (1, 1), 1 / 32, -1, True).flatten(1)
        return F.normalize(f, dim=1)
    ytr = torch.tensor([c for _, c, _ in tr_obj]); yva = torch.tensor([c for _, c, _ in va_obj])
    for name, fn in (("crop", crops), ("roi", lambda im, ob: rois(im, ob, 2 * a.size))):
        ftr, fva = fn(tr_img, tr_obj), fn(va_img, va_obj)
        sim = fva @ ftr.T
        v, ix = sim.topk(20, dim=1)
        w = (v / 0.07).exp()
        votes = torch.zeros(len(va_obj), 10).scatter_add_(1, ytr[ix], w)
        out[name] = round(100 * (votes.argmax(1) == yva).float().mean().item(), 1)
    bb.train()
    return out


if a.ckpts:  # evaluation only: the same object kNN for sslcli checkpoints
    from sslcli.backbone_checkpoints import load_backbone
    for ck in a.ckpts.split(","):
        bb, _ = load_backbone(ck)
        print(ck, evaluate(), flush=True)
    raise SystemExit(0)

res = {"args": vars(a)}
t0 = time.time()
step = 0
if 0 in steps:
    res[0] = evaluate(); print(0, res[0], flush=True)
while step < total:
    idx = torch.randint(0, a.n, (a.bs,))
    x = tr_img[idx]
    v1, v2 = view(x), view(x)
    cur = lr * 0.5 * (1 + math.cos(math.pi * step / total)) if step > 10 else lr * step / 10
    for gp in opt.param_groups:
        gp["lr"] = cur
    if a.method == "simclr":
        z = F.normalize(proj(bb(torch.cat([v1, v2]))), dim=1)
        n = a.bs
        logits = z @ z.T / a.tau
        logits.fill_diagonal_(-1e9)
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
        loss = F.cross_entropy(logits, target)
    if a.method == "moco":
        q = F.normalize(proj(bb(v1)), dim=1)
        with torch.no_grad():
            perm = torch.randperm(a.bs)
            ks = [F.normalize(proj_k(bb_k(c)), dim=1) for c in v2[perm].chunk(a.groups)]
            k = torch.cat(ks)[torch.argsort(perm)]
        lpos = (q * k).sum(1, keepdim=True); lneg = q @ queue
        logits = torch.cat([lpos, lneg], 1) / a.tau
        loss = F.cross_entropy(logits, torch.zeros(a.bs, dtype=torch.long))
    opt.zero_grad(); loss.backward(); opt.step()
    if a.method == "moco":
        with torch.no_grad():
            for t_, o_ in zip(list(bb_k.parameters()) + list(proj_k.parameters()), list(bb.parameters()) + list(proj.parameters())):
                t_.mul_(a.m).add_(o_, alpha=1 - a.m)
            for t_, o_ in zip(list(bb_k.buffers()) + list(proj_k.buffers()), list(bb.buffers()) + list(proj.buffers())):
                t_.copy_(o_)
            queue[:, qptr:qptr + a.bs] = k.T; qptr = (qptr + a.bs) % a.K
            if step % 50 == 0: print("queue cos", round(mean_pairwise_cosine(queue).item(), 3), flush=True)
    step += 1
    if step % 50 == 0:
        print(f"step {step} loss {loss.item():.3f} {time.time()-t0:.0f}s", flush=True)
    if step in steps:
        res[step] = evaluate(); print(step, res[step], f"{time.time()-t0:.0f}s", flush=True)
print("RESULT", json.dumps(res), flush=True)
