"""Independent raw-PyTorch re-implementation of the DER paper's P-MNIST oEWC protocol (Mammoth's ewc_on):
20 tasks, fixed pixel permutations, inputs in [0, 1], MLP 784-100-100-10 with Xavier-uniform weights / zero
biases, 1 epoch, batch 128, plain SGD lr 0.1, penalty e_lambda * sum F (theta - theta*)^2 (no 1/2), online
Fisher F <- gamma F + F_t with F_t = sum_i p(y_i|x_i) g_i^2 / (len(loader) * batch) over all 60000 samples.
No cl-bench code is used: it checks that the gap between our oEWC P-MNIST row and the DER paper's
(reports/reproduction.md) is not in cl-bench's code. 1 torch thread, about 15 min on a 2-core CPU.

    CL_BENCH_DATA=$CL_BENCH_DATA uv run python reports/verification/oewc_pmnist_raw.py SEED LAMBDA

(CL_BENCH_DATA: the folder holding MNIST/raw.)
"""
import os, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F
from torch.func import functional_call, vmap, grad
seed, lam = int(sys.argv[1]), float(sys.argv[2]); gamma, lr, bs, T = 1.0, 0.1, 128, 20
torch.set_num_threads(1)
root = os.path.join(os.environ["CL_BENCH_DATA"], "MNIST", "raw", "")
def idx(path, images):
    raw = open(root + path, "rb").read()
    return np.frombuffer(raw, np.uint8, offset=16 if images else 8)
xtr = torch.tensor(idx("train-images-idx3-ubyte", 1).reshape(-1, 784).copy()).float() / 255
ytr = torch.tensor(idx("train-labels-idx1-ubyte", 0).copy()).long()
xte = torch.tensor(idx("t10k-images-idx3-ubyte", 1).reshape(-1, 784).copy()).float() / 255
yte = torch.tensor(idx("t10k-labels-idx1-ubyte", 0).copy()).long()
torch.manual_seed(seed)
perms = [torch.randperm(784) for _ in range(T)]
net = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
for m in net:
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight); nn.init.zeros_(m.bias)
opt = torch.optim.SGD(net.parameters(), lr=lr)
flat = lambda: torch.cat([p.reshape(-1) for p in net.parameters()])
fish = anchor = None
names = [n for n, _ in net.named_parameters()]
def logp_y(params, x, y):
    return functional_call(net, params, (x[None],)).log_softmax(-1)[0].gather(0, y[None])[0]
t0 = time.time()
for t in range(T):
    xt, order = xtr[:, perms[t]], torch.randperm(60000)
    for i in range(0, 60000, bs):
        b = order[i:i + bs]
        loss = F.cross_entropy(net(xt[b]), ytr[b])
        if fish is not None:
            loss = loss + lam * (fish * (flat() - anchor).square()).sum()
        opt.zero_grad(); loss.backward(); opt.step()
    params = {n: p.detach() for n, p in net.named_parameters()}
    f = torch.zeros_like(flat())
    for i in range(0, 60000, 1000):
        x, y = xt[i:i + 1000], ytr[i:i + 1000]
        g = vmap(grad(logp_y), in_dims=(None, 0, 0))(params, x, y)
        g = torch.cat([g[n].reshape(len(x), -1) for n in names], 1)
        with torch.no_grad():
            p = net(x).softmax(-1).gather(1, y[:, None])
        f += (p * g.square()).sum(0)
    f /= (len(range(0, 60000, bs)) * bs)
    fish = f if fish is None else gamma * fish + f
    anchor = flat().detach().clone()
with torch.no_grad():
    accs = [(net(xte[:, perms[j]]).argmax(1) == yte).float().mean().item() for j in range(T)]
print(f"seed {seed} lambda {lam}: final average accuracy {100 * np.mean(accs):.2f} ({time.time() - t0:.0f} s)")
