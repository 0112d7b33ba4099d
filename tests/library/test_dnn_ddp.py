"""Data-parallel training really averages gradients: two DDP ranks (gloo, as Ray Train sets up on CPU)
that see different halves of a batch end with the weights of one process that saw the whole batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from karaoke.config import config_from_dict

CONFIG = {
    "stft": {"n_fft": 64, "hop_length": 16},
    "windows": {"n_frames": 4},
    "dnn": {"hidden_sizes": [8], "bias_offset": 0.0},
    "train": {"optimizer": "adam", "learning_rate": 0.01},
}


def _batches(loss: str) -> list[dict[str, torch.Tensor]]:
    """Three steps of 8 windows (n_bins 33, T 4); each rank takes 4 of each step's windows."""
    rng = np.random.default_rng(0)
    shape = (8, 33, 4)
    return [
        {"mixture": torch.from_numpy(rng.random(shape, dtype=np.float32)),
         "ibm": torch.from_numpy((rng.random(shape) > 0.7).astype(np.float32))}
        for _ in range(3)
    ]


def _train(model, batches, loss: str) -> dict[str, np.ndarray]:
    from karaoke.models.dnn import _unwrap, make_loss, make_optimizer, train_epoch

    config = config_from_dict({**CONFIG, "train": {**CONFIG["train"], "loss": loss}})
    train_epoch(model, batches, make_optimizer(model, config.train), make_loss(config.train), torch.device("cpu"))
    return {k: v.detach().numpy().copy() for k, v in _unwrap(model).state_dict().items()}


def _rank(rank: int, loss: str, out: str) -> None:
    import torch.distributed as dist

    from karaoke.models.dnn import build_model

    # a file rendezvous: no free port to find, so no other process can take it first
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(build_model(config_from_dict(CONFIG)))
        half = [{k: v[rank * 4 : rank * 4 + 4] for k, v in batch.items()} for batch in _batches(loss)]
        np.savez(f"{out}/rank{rank}.npz", **_train(model, half, loss))
        # Neither rank tears its connections down while the other may still use them: once, under
        # load, a rank whose peer had already closed died with SIGABRT inside gloo.
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_two_ddp_ranks_train_the_model_of_the_whole_batch(loss, tmp_path, torch_one_thread):
    from karaoke.models.dnn import build_model

    torch.multiprocessing.spawn(_rank, args=(loss, str(tmp_path)), nprocs=2, join=True)
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]

    torch.manual_seed(0)
    whole = _train(build_model(config_from_dict(CONFIG)), _batches(loss), loss)
    torch.manual_seed(0)
    initial = build_model(config_from_dict(CONFIG)).state_dict()
    for name, value in whole.items():
        assert not np.allclose(value, initial[name].numpy())  # training moved every tensor
        for rank in ranks:
            np.testing.assert_allclose(rank[name], value, atol=1e-5, err_msg=f"{loss}: {name} differs from one process")
