"""``lit-scsdpo export`` / ``consolidate`` and :mod:`lit_scsdpo.checkpoints` on a real tiny run:
the exported Hugging Face folder reproduces the trained policy's and teacher's logits; a sharded
(DCP + meta.pt) folder, written in one process exactly as ``ModelParallelStrategy`` writes it,
reads back to the same weights and AdamW moments, consolidates into a file a single-process
``Trainer.fit`` resumes from; wrong paths fail with one line naming them."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_scsdpo import SDPO, OptimConfig, RolloutDataModule
from lit_scsdpo import checkpoints as C
from lit_scsdpo.data import EvaluationConfig
from lit_scsdpo.entry import main as cli_main
from lit_scsdpo.config import TeacherConfig
from lit_scsdpo.rollout import SamplingConfig

from .toy import DigitTask

torch.set_num_threads(1)
# dcp.save(no_dist=True) in one process is what these tests mean to do
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled, unavailable or uninitialized")
ROOT = Path(__file__).resolve().parents[1]
IDS = torch.tensor([[1, 5, 9, 17, 33, 40, 2, 60]])


def run_cli(*args):
    """The installed console script, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).with_name("lit-scsdpo")), *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def fit(model, root, epochs, ckpt_path=None, callbacks=()):
    dm = RolloutDataModule(DigitTask(train_size=16, val_size=4, test_size=4), questions_per_step=4,
                           rollouts_per_question=4, sampling=SamplingConfig(1.0, 1.0, 8),
                           evaluation=EvaluationConfig(samples=2))
    trainer = pl.Trainer(log_every_n_steps=1, max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, limit_val_batches=0,
                         reload_dataloaders_every_n_epochs=1, callbacks=list(callbacks))
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return trainer


def write_sharded(trainer, module, folder):
    """What ``ModelParallelStrategy.save_checkpoint(save_distributed_checkpoint=True)`` writes,
    in one process without a process group: a DCP of the model state dict and the FQN-keyed
    optimizer state, plus ``meta.pt`` with the rest of the checkpoint."""
    opt = trainer.optimizers[0]
    state = {"state_dict": get_model_state_dict(module), "optimizer_0": get_optimizer_state_dict(module, opt)}
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    meta = trainer._checkpoint_connector.dump_checkpoint()
    meta.pop("state_dict"), meta.pop("optimizer_states")
    torch.save(meta, folder / "meta.pt")


@pytest.fixture(scope="module")
def trained(tiny_model_path, tmp_path_factory):
    """SDPO fitted 2 steps (lr 1e-3, so policy and EMA teacher moved), a .ckpt and a sharded folder."""
    root = tmp_path_factory.mktemp("trained")
    pl.seed_everything(0)
    module = SDPO(str(tiny_model_path), optim=OptimConfig(lr=1e-3, warmup_steps=0),
                  teacher=TeacherConfig(rate=0.5))
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = fit(module, root, epochs=2)
    assert trainer.global_step == 2
    assert not torch.equal(initial["policy.lm_head.weight"], module.state_dict()["policy.lm_head.weight"])
    assert not torch.equal(initial["teacher.weights.model.norm.weight"],
                           module.state_dict()["teacher.weights.model.norm.weight"])
    trainer.save_checkpoint(root / "last.ckpt")
    write_sharded(trainer, module, root / "sharded")
    return module, trainer, root


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_same(a, b, where="ckpt"):
    """Recursive equality of checkpoint contents (tensors exactly)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def test_export_cli_reproduces_policy_and_teacher(trained, tiny_model_path, tmp_path):
    module, _, root = trained
    ckpt, out = root / "last.ckpt", tmp_path / "hf"
    before = digest(ckpt)
    stdout = run_cli("export", "--ckpt_path", ckpt, "--out", out, "--teacher")
    assert f"exported the policy (float32) to {out}" in stdout and str(out / "teacher") in stdout
    assert digest(ckpt) == before  # the input is only read
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"):
        assert (out / name).is_file() and (out / "teacher" / name).is_file(), name
    # every file the same mode (transformers writes the weights through a 0600 temporary file)
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777

    with torch.no_grad():
        for folder, reference in ((out, module.policy), (out / "teacher", module.teacher.weights)):
            exported = AutoModelForCausalLM.from_pretrained(folder).eval()
            assert exported.dtype == torch.float32
            got = exported(input_ids=IDS).logits
            want = reference.eval()(input_ids=IDS).logits
            assert torch.allclose(got, want, rtol=0, atol=1e-6), (folder, (got - want).abs().max())
        # the teacher is not the policy (EMA at rate 0.5 after two steps)
        assert not torch.allclose(module.policy(input_ids=IDS).logits, module.teacher.weights(input_ids=IDS).logits)

    tok, base = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(tiny_model_path)
    text = "<|im_start|>user\nWhat is 12 + 30? <answer>42</answer><|im_end|>\n"
    assert tok(text)["input_ids"] == base(text)["input_ids"]
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok.chat_template == base.chat_template
    assert exported.generation_config.eos_token_id == module.policy.generation_config.eos_token_id


def test_export_bfloat16_from_sharded_folder(trained, tmp_path):
    """Export reads a sharded folder too, and casts (safetensors in bf16, config says so)."""
    module, _, root = trained
    written = C.export_hf(root / "sharded", tmp_path / "bf16", dtype="bfloat16")
    assert written == {"policy": tmp_path / "bf16"}
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto")
    assert exported.dtype == torch.bfloat16
    assert exported.config.tie_word_embeddings and exported.lm_head.weight is exported.model.embed_tokens.weight
    for name, p in exported.named_parameters():
        assert torch.equal(p, module.policy.state_dict()[name].to(torch.bfloat16)), name


def test_sharded_folder_loads_weights_and_adamw_moments(trained):
    module, trainer, root = trained
    assert C.is_sharded_checkpoint(root / "sharded") and not C.is_sharded_checkpoint(root / "last.ckpt")
    ckpt = C.load_checkpoint(root / "sharded")
    assert_same(ckpt["state_dict"], module.state_dict(), "state_dict")
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["model_name_or_path"]
    weights_only = C.load_checkpoint(root / "sharded", with_optimizer=False)  # what export reads
    assert "optimizer_states" not in weights_only and not any(k.startswith("optimizer_") for k in weights_only)
    assert_same(weights_only["state_dict"], ckpt["state_dict"], "state_dict")

    original = trainer.optimizers[0]
    (state,) = ckpt["optimizer_states"]
    assert all(isinstance(k, int) for k in state["state"])
    assert_same(state, original.state_dict(), "optimizer_states[0]")  # the standard format, exactly
    fresh = torch.optim.AdamW(module.policy.parameters(), lr=0.5)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == original.param_groups[0]["lr"]
    for p in module.policy.parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][key], original.state[p][key]), key


def test_optimizer_ids_enumerate_all_param_groups():
    """Ids are positions over the param groups in order: a two-group AdamW round-trips."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW([{"params": [net[2].weight, net[0].bias], "lr": 0.1},
                             {"params": [net[0].weight, net[2].bias], "weight_decay": 0.0}], lr=0.01)
    net(torch.randn(5, 3)).square().sum().backward()
    opt.step()
    by_fqn = get_optimizer_state_dict(net, opt)
    assert by_fqn["param_groups"][0]["params"] == ["2.weight", "0.bias"]
    converted = C.optimizer_state_by_id(by_fqn)
    assert_same(converted, opt.state_dict())
    assert C.optimizer_state_by_id(converted) is converted


def test_consolidate_then_resume_single_process(trained, tiny_model_path, tmp_path):
    module, trainer, root = trained
    out = tmp_path / "full" / "last-full.ckpt"
    stdout = run_cli("consolidate", "--ckpt_path", root / "sharded", "--out", out)
    assert str(out) in stdout and sorted(os.listdir(out.parent)) == ["last-full.ckpt"]  # no temporary left
    consolidated = torch.load(out, map_location="cpu", weights_only=True)
    direct = torch.load(root / "last.ckpt", map_location="cpu", weights_only=True)
    assert_same(consolidated, direct)  # the same file Trainer.save_checkpoint writes in one process

    class Restored(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.step, self.opt = trainer.global_step, trainer.optimizers[0]
            self.lr = trainer.lr_scheduler_configs[0].scheduler.last_epoch
            self.weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.moments = {n: {k: v.clone() for k, v in self.opt.state[p].items()}
                            for n, p in pl_module.policy.named_parameters()}

    pl.seed_everything(1)
    seen = Restored()
    resumed = SDPO(str(tiny_model_path), optim=OptimConfig(lr=1e-3, warmup_steps=0),
                   teacher=TeacherConfig(rate=0.5))
    new = fit(resumed, tmp_path, epochs=3, ckpt_path=out, callbacks=[seen])
    assert seen.step == 2 and new.global_step == 3 and new.current_epoch == 3
    assert seen.lr == trainer.lr_scheduler_configs[0].scheduler.last_epoch
    assert_same(seen.weights, module.state_dict(), "restored weights")
    for n, p in module.policy.named_parameters():
        assert_same(seen.moments[n], trainer.optimizers[0].state[p], f"moments of {n}")


def test_errors_are_one_line_and_name_the_path(trained, tmp_path):
    module, _, root = trained

    def error(*args):
        with pytest.raises(SystemExit) as info:
            cli_main(list(map(str, args)))  # the console script's entry point, dispatching to checkpoints.main
        message = str(info.value.code)
        assert "\n" not in message and message.startswith(f"lit-scsdpo {args[0]}: error: ")
        return message

    missing = tmp_path / "nope.ckpt"
    msg = error("export", "--ckpt_path", missing, "--out", tmp_path / "o")
    assert msg == f"lit-scsdpo export: error: checkpoint {str(missing)!r}: no such file or folder"
    assert "no such file or folder" in error("consolidate", "--ckpt_path", missing, "--out", tmp_path / "o.ckpt")

    empty = tmp_path / "not_a_checkpoint"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    msg = error("export", "--ckpt_path", empty, "--out", tmp_path / "o")
    assert str(empty) in msg and "missing .metadata and meta.pt" in msg

    no_meta = tmp_path / "dcp_only"
    dcp.save({"state_dict": {"w": torch.zeros(2)}}, checkpoint_id=str(no_meta), no_dist=True)
    assert "missing meta.pt" in error("consolidate", "--ckpt_path", no_meta, "--out", tmp_path / "o.ckpt")

    text = tmp_path / "junk.ckpt"
    text.write_text("not a checkpoint")
    assert f"{str(text)!r}: not a readable Lightning checkpoint" in error("export", "--ckpt_path", text,
                                                                          "--out", tmp_path / "o")
    assert "already a single file" in error("consolidate", "--ckpt_path", root / "last.ckpt", "--out", tmp_path / "x")

    # a checkpoint without teacher weights (GRPO, or teacher_mode live)
    no_teacher = torch.load(root / "last.ckpt", map_location="cpu", weights_only=True)
    no_teacher["state_dict"] = {k: v for k, v in no_teacher["state_dict"].items() if not k.startswith("teacher.")}
    torch.save(no_teacher, tmp_path / "grpo.ckpt")
    assert "no teacher weights" in error("export", "--ckpt_path", tmp_path / "grpo.ckpt", "--out", tmp_path / "o",
                                         "--teacher")
    # tied embeddings that differ (a corrupted or hand-edited checkpoint) are refused, not half-loaded
    untied = dict(no_teacher, state_dict=dict(no_teacher["state_dict"]))
    untied["state_dict"]["policy.lm_head.weight"] = untied["state_dict"]["policy.lm_head.weight"] + 1
    torch.save(untied, tmp_path / "untied.ckpt")
    assert "tied parameters" in error("export", "--ckpt_path", tmp_path / "untied.ckpt", "--out", tmp_path / "o")
    assert "must not be inside the checkpoint folder" in error("export", "--ckpt_path", root / "sharded",
                                                               "--out", root / "sharded" / "hf")
    assert sorted(os.listdir(root / "sharded")) == [".metadata", "__0_0.distcp", "meta.pt"]
