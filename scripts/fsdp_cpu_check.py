"""FSDP on CPU processes (gloo): does PyTorch shard and train explainrec's tiny LLaMA correctly without a GPU?

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 scripts/fsdp_cpu_check.py

Each process wraps every decoder layer and the model with FSDP2's ``fully_shard`` on a CPU device mesh, takes one
SGD step on its own batch, and compares the gathered weights with an unsharded copy stepped on the mean loss of
all processes' batches (what data parallel computes). Prints how many parameters each process holds and the
largest difference (float32 rounding, ~1e-8, when sharding is right).

Why a script and not `explainrec train` under configs/accelerate/fsdp.yaml: on a CPU, accelerate (1.x) turns an
FSDP launch into plain data parallel (an ``Accelerator(cpu=True)`` ignores the FSDP plugin), so the training
command runs there but shards nothing; sharding explainrec's training needs GPUs (scripts/gpu_scale_check.sh).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from explainrec.llm.load import load_llm


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model, _ = load_llm("tiny", device="cpu")
    reference, _ = load_llm("tiny", device="cpu")
    reference.load_state_dict(model.state_dict())
    model.train()
    reference.train()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    batches = torch.randint(0, 50, (world, 2, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(input_ids=batches[rank], labels=batches[rank]).loss.backward()
    optimizer.step()
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    loss = sum(reference(input_ids=b, labels=b).loss for b in batches) / world
    loss.backward()
    ref_optimizer.step()
    diff = max((p.full_tensor() - q).abs().max().item()
               for p, q in zip(model.parameters(), reference.parameters()))
    held = sum(p.to_local().numel() for p in model.parameters())
    total = sum(p.numel() for p in reference.parameters())
    print(f"process {rank} of {world}: holds {held:,} of {total:,} parameters; largest |sharded - unsharded| "
          f"after one step: {diff:.1e}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
