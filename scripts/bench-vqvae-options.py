#!/usr/bin/env python3
# Benchmark (not a test): the full-size VQ-VAE encoder (256 channels, upstream layout, random
# weights) per-token cost under libtorch CPU options: chunk size, channels-last 3-D, oneDNN
# on/off, next to a 2048^3 GEMM. Same libtorch as the node (run with .venv/bin/python).
# Usage: .venv/bin/python scripts/bench-vqvae-options.py [threads=2] [tokens=48]
import torch, time, sys
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv)>1 else 2)
N=int(sys.argv[2]) if len(sys.argv)>2 else 48
torch.manual_seed(0)
C=256
down1=torch.nn.Conv3d(1,C,4,2,1); res=[(torch.nn.Conv3d(C,C,3,1,1),torch.nn.Conv3d(C,C,3,1,1)) for _ in range(4)]
down2=torch.nn.Conv3d(C,C,2,2,0); out=torch.nn.Conv3d(C,2,3,1,1)
mods=[down1,down2,out]+[c for p in res for c in p]
def fwd(x):
    x=torch.relu(down1(x))
    for c1,c2 in res[:2]: x=torch.relu(x+c2(torch.relu(c1(x))))
    x=torch.relu(down2(x))
    for c1,c2 in res[2:]: x=torch.relu(x+c2(torch.relu(c1(x))))
    return out(x)
x=torch.rand(N,1,8,32,32)
def run(n, cl=False, mkldnn=True):
    torch.backends.mkldnn.enabled=mkldnn
    for m in mods: m.to(memory_format=torch.channels_last_3d if cl else torch.contiguous_format)
    xx=x.to(memory_format=torch.channels_last_3d) if cl else x
    fwd(xx[:n])  # warm-up (oneDNN primitive creation)
    t0=time.perf_counter()
    for s in range(0,N,n): fwd(xx[s:s+n])
    return (time.perf_counter()-t0)/N
with torch.no_grad():
  a=torch.randn(2048,2048); b=torch.randn(2048,2048)
  g=min((lambda t0: (a@b, time.perf_counter()-t0)[1])(time.perf_counter()) for _ in range(7))
  print(f"GEMM 2048^3: {2*2048**3/g/1e9:.1f} GFLOP/s")
  for label,kw in [("chunk 8",dict(n=8)),("chunk 16",dict(n=16)),("chunk 48",dict(n=48)),
                   ("chunk 16 channels_last_3d",dict(n=16,cl=True)),("chunk 16 oneDNN off",dict(n=16,mkldnn=False))]:
      t=run(**kw); print(f"{label:28}: {t*1e3:6.1f} ms/token {16.48/t:6.1f} GFLOP/s")
