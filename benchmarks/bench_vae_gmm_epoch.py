"""Time one VAE-GMM training epoch on the XRec Google data (~330k training interactions, implicit feedback).

    python benchmarks/bench_vae_gmm_epoch.py [--data ../shared/data/xrec/google] [--batch-size 4096]

Prints, for the stage-1 default model (E=64, D=32, 2 Transformer layers, 1 negative per pair):
  * seconds per epoch and interactions/s for a plain-autoencoder (pre-training) epoch and an ELBO epoch at
    ``--batch-size`` (paper: 4096), with the GMM init in between;
  * the baseline, measured in the same run: the same ELBO step at batch 256 (a small-batch, per-few-pairs
    style like the reference's loader), timed over ``--baseline-steps`` steps and reported as interactions/s;
    the ratio is large-batch throughput / small-batch throughput;
  * test AUC after those two epochs (each test positive against one uniform item, sklearn roc_auc_score).
Target: an epoch under 60 s on a 2-core CPU (``--threads 1`` by default, see its help). The CPU may be shared (other jobs slow every figure alike,
which is why the baseline runs in the same process).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from explainrec.data import load_dataset
from explainrec.methods.gavamoe import stage1_eval, stage1_train as stage1
from explainrec.methods.gavamoe.config import VaeGmmConfig
from explainrec.methods.gavamoe.gmm_init import init_prior_from_latents
from explainrec.methods.gavamoe.vae_gmm import VaeGmm

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/xrec/google"


def _throughput(model, optimizer, data, cfg, steps: int, gen: torch.Generator) -> float:
    """Interactions/s of ``steps`` ELBO steps at ``cfg.batch_size`` (same code path as an epoch)."""
    sub = stage1.TrainData(**data.__dict__)
    n = min(steps * cfg.batch_size, data.train_user.shape[0])
    sub.train_user, sub.train_item = data.train_user[:n], data.train_item[:n]
    sub.train_rating = None if data.train_rating is None else data.train_rating[:n]
    t = time.perf_counter()
    stage1._train_epoch(model, optimizer, sub, cfg, "elbo", gen, desc="baseline", progress=False)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--baseline-batch-size", type=int, default=256)
    ap.add_argument("--baseline-steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads. 1 by default: on a 2-core CPU shared with other jobs, a second "
                         "thread mostly waits for a core (elementwise ops measured ~15x slower with 2 threads)")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    ds = load_dataset(args.data, seed=args.seed)
    print(f"data: {ds.name} {len(ds.interactions)} interactions ({(ds.interactions.split == 'train').sum()} train), "
          f"{ds.n_users} users, {ds.n_items} items, implicit={ds.implicit}; loaded in {time.perf_counter() - t0:.1f}s")
    print(f"torch threads: {torch.get_num_threads()}")

    cfg = VaeGmmConfig(clusters=args.clusters, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    torch.manual_seed(args.seed)
    data = stage1.TrainData.from_dataset(ds, cfg, torch.device("cpu"))
    model = VaeGmm(ds.n_users, ds.n_items, n_clusters=cfg.clusters, likelihood=data.likelihood,
                   embed_dim=cfg.embed_dim, latent_dim=cfg.latent_dim, n_layers=cfg.n_layers, n_heads=cfg.n_heads)
    model.set_known(data.user_known, data.item_known)
    optimizer = stage1._make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(args.seed)
    n_train = data.train_user.shape[0]
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, likelihood={data.likelihood}")

    t = time.perf_counter()
    pre = stage1._train_epoch(model, optimizer, data, cfg, "pretrain", gen, desc="pretrain epoch", progress=args.progress)
    t_pre = time.perf_counter() - t
    print(f"pretrain epoch: {t_pre:.1f}s  {n_train / t_pre:,.0f} interactions/s  loss {pre['loss']:.4f}")

    t = time.perf_counter()
    latents = stage1.latent_means(model, data.train_user, data.train_item, cfg.eval_batch_size)
    init_prior_from_latents(model, latents.numpy(), seed=args.seed)
    print(f"GMM init (encode {n_train} pairs + GaussianMixture on <=50k): {time.perf_counter() - t:.1f}s")

    t = time.perf_counter()
    elbo = stage1._train_epoch(model, optimizer, data, cfg, "elbo", gen, desc="elbo epoch", progress=args.progress)
    t_elbo = time.perf_counter() - t
    big = n_train / t_elbo
    print(f"ELBO epoch (batch {cfg.batch_size}): {t_elbo:.1f}s  {big:,.0f} interactions/s  loss {elbo['loss']:.4f} "
          f"(recon {elbo['recon']:.4f}, kl {elbo['kl']:.4f})  -> {'PASS' if t_elbo < 60 else 'FAIL'} (< 60 s)")

    t = time.perf_counter()
    valid = stage1._valid_loss(model, data, cfg, "elbo")
    print(f"validation loss {valid.get('loss', float('nan')):.4f} in {time.perf_counter() - t:.1f}s")

    from sklearn.metrics import roc_auc_score

    test = ds.interactions.of_split("test")
    tu, ti = torch.as_tensor(test.user, dtype=torch.long), torch.as_tensor(test.item, dtype=torch.long)
    neg = torch.randint(ds.n_items, (len(test),), generator=torch.Generator().manual_seed(args.seed + 2))
    t = time.perf_counter()
    pos_s = stage1_eval._scores(model, tu, ti, cfg.eval_batch_size, rating=False)
    neg_s = stage1_eval._scores(model, tu, neg, cfg.eval_batch_size, rating=False)
    auc = roc_auc_score(np.r_[np.ones(len(pos_s)), np.zeros(len(neg_s))], np.r_[pos_s, neg_s])
    print(f"test AUC after 1 pretrain + 1 ELBO epoch: {auc:.4f} ({len(test)} positives vs as many uniform "
          f"negatives; scored in {time.perf_counter() - t:.1f}s)")

    small = cfg.replace(batch_size=args.baseline_batch_size)
    base = _throughput(model, optimizer, data, small, args.baseline_steps, gen)
    print(f"baseline: batch {small.batch_size}, {args.baseline_steps} steps: {base:,.0f} interactions/s "
          f"(an epoch would take ~{n_train / base:.0f}s)")
    print(f"ratio: batch {cfg.batch_size} is {big / base:.1f}x the throughput of batch {small.batch_size}")


if __name__ == "__main__":
    main()
