"""World-size invariance with real torch.distributed (gloo, 2 CPU processes): the SC-SDPO loss
computed on two ranks (half the questions each, global weight normalisation and global loss
normaliser through all-reduce, DDP-style gradient averaging) equals one process on all."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from lit_scsdpo import SDPO
from lit_scsdpo import losses as L
from lit_scsdpo.config import DistillationConfig
from lit_scsdpo.distributed import distributed_reduce

from .test_module import batch_of, make_rollouts

REWARDS = [1, 1, 0, 0] + [1, 1, 1, 1] + [1, 0, 0, 0] + [1, 1, 1, 0]  # 4 questions, G = 4


def sc_sdpo_grads(path, questions, reduce=None):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = SDPO(path, distillation=DistillationConfig(topk=10))
    r = make_rollouts(model.tokenizer, REWARDS)
    rewards = r.rewards
    # SC-SDPO weights of this rank's questions, normalised over the global batch
    r.question_weights = torch.zeros(r.num_questions)
    r.question_weights[questions] = L.difficulty_weights(rewards[questions], reduce=reduce)
    batch = batch_of(r, questions, step=questions, pad=model.tokenizer.pad_token_id)
    loss, _ = model.compute_loss(batch)  # global normaliser via the module's reduce
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    (loss * world).backward()
    grads = torch.cat([p.grad.flatten() for p in model.policy.parameters()])
    if world > 1:  # what DDP does: average the gradients over ranks
        torch.distributed.all_reduce(grads)
        grads /= world
    return loss.item(), grads


def _worker(rank, world, port, path, q):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    questions = [0, 1] if rank == 0 else [2, 3]
    loss, grads = sc_sdpo_grads(path, questions, reduce=distributed_reduce())
    q.put((rank, loss, grads.numpy()))  # by value: a tensor's shared memory dies with this process
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_equal_one_process(tiny_model_path):
    full_loss, full_grads = sc_sdpo_grads(tiny_model_path, [0, 1, 2, 3])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, tiny_model_path, q)) for r in range(2)]
    for p in procs:
        p.start()
    out = {rank: (loss, torch.from_numpy(grads)) for rank, loss, grads in (q.get(timeout=180) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
    assert out[0][1].abs().sum() > 0
    # contributions sum to the loss (to float noise: padding differs between the two layouts)
    assert out[0][0] + out[1][0] == pytest.approx(full_loss, rel=1e-4)
    assert torch.allclose(out[0][1], full_grads, atol=1e-7, rtol=1e-4)
    assert torch.allclose(out[1][1], full_grads, atol=1e-7, rtol=1e-4)
