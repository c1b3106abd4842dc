"""DDP on the CPU: two gloo processes train the GAN stage and end with identical weights, one checkpoint set."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from test_train import assert_same_state, gan_sections, log_records, tiny, write_config

from esrgan.train import load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ddp_worker(rank: int, cfg_yaml: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    import torch.distributed as dist

    from esrgan.config import load_config

    result = train(load_config(cfg_yaml))
    torch.save(result.generator.state_dict(), Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_end_identical_with_one_checkpoint(photos: tuple[Path, Path], tmp_path: Path) -> None:
    """The GAN stage (G and D both wrapped in DDP, EMA on), two gloo processes on the CPU."""
    sections = gan_sections(None, perceptual=0.0)
    sections["train"].update({"total_steps": 4, "ema_decay": 0.5})
    sections["checkpoint"] = {"every": 2, "keep_last": 5}
    cfg = tiny(photos, tmp_path, "ddp", **sections)
    cfg_yaml = write_config(cfg, tmp_path / "ddp.yaml")
    mp.spawn(ddp_worker, args=(str(cfg_yaml), free_port(), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert_same_state(a, b)
    names = sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir())
    assert names == ["best.ckpt", "step_00000002.ckpt", "step_00000004.ckpt"]  # written once, by rank 0
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "step_00000004.ckpt")
    assert state["data_position"] == {"samples_per_rank": 8, "world_size": 2}
    assert_same_state(state["generator_ema"], a)  # result.generator is the EMA one
    assert [r["event"] for r in log_records(cfg.run_dir) if "event" in r] == ["start", "done"]
