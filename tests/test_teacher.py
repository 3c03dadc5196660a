"""Reprompt builder (docs/specification.md §1.2, §7 items 5 and 11), truncation, EMA, token alignment."""

import pytest
import torch
from transformers import AutoTokenizer

from lit_scsdpo.chat import render_prompt
from lit_scsdpo.teacher import (
    RepromptTemplates,
    SelfTeacher,
    build_reprompts,
    fit_reprompt,
    self_distillation_mask,
)

SYSTEM = {"role": "system", "content": "Answer in tags."}


def group(rewards, feedback=None, uid="q"):
    n = len(rewards)
    msgs = [[SYSTEM, {"role": "user", "content": "What is 2+3?"}]] * n
    responses = [f"response {i}" for i in range(n)]
    return msgs, responses, list(rewards), [uid] * n, feedback or [""] * n


@pytest.mark.parametrize("k,G,trained", [(0, 8, 0), (1, 8, 7), (2, 8, 8), (5, 8, 8), (8, 8, 8), (1, 2, 1), (2, 2, 2)])
def test_mask_counts_by_number_of_successes(k, G, trained):  # docs/specification.md §7 item 5
    rewards = [1.0] * k + [0.0] * (G - k)
    rps = build_reprompts(*group(rewards))
    assert sum(rp.active for rp in rps) == trained
    assert self_distillation_mask(rewards, ["q"] * G, [False] * G) == [rp.active for rp in rps]
    if k == 1:
        assert not rps[0].active  # the lone success cannot demonstrate to itself


def test_self_excluded_and_first_other_success_chosen():  # docs/specification.md §7 item 11
    rewards = [0.0, 1.0, 0.0, 1.0, 1.0]
    rps = build_reprompts(*group(rewards))
    assert [rp.demo_index for rp in rps] == [1, 3, 1, 1, 1]
    assert rps[1].demonstration == "response 3"  # not its own response 1
    for i, rp in enumerate(rps):
        assert rp.demo_index != i
    # with self allowed, a success demonstrates to itself only if it is the first success
    rps_self = build_reprompts(*group(rewards), dont_reprompt_on_self_success=False)
    assert [rp.demo_index for rp in rps_self] == [1, 1, 1, 1, 1]


def test_groups_do_not_mix():
    m1, r1, w1, u1, f1 = group([1.0, 0.0], uid="a")
    m2, r2, w2, u2, f2 = group([0.0, 0.0], uid="b")
    rps = build_reprompts(m1 + m2, r1 + r2, w1 + w2, u1 + u2, f1 + f2)
    assert [rp.demo_index for rp in rps] == [None, 0, None, None]


def test_threshold():
    rps = build_reprompts(*group([0.4, 0.6, 0.0]))
    assert [rp.demo_index for rp in rps] == [1, None, 1]
    rps = build_reprompts(*group([0.4, 0.6, 0.0]), success_threshold=0.3)
    assert [rp.demo_index for rp in rps] == [1, 0, 0]


def test_feedback_rules():
    rewards = [0.0, 0.0, 1.0]
    fb = ["wrong A", "", "ok"]
    # default (science / tool use): feedback off
    assert all(rp.feedback is None for rp in build_reprompts(*group(rewards, fb)))
    # on, only without a demonstration: rows 0/1 have a demo (row 2), row 2 has none but...
    rps = build_reprompts(*group(rewards, fb), include_feedback=True)
    assert [rp.feedback for rp in rps] == [None, None, "ok"]
    rps = build_reprompts(*group([0.0, 0.0], ["wrong A", ""]), include_feedback=True)
    assert [rp.feedback for rp in rps] == ["wrong A", None]
    assert [rp.active for rp in rps] == [True, False]  # empty feedback does not count
    rps = build_reprompts(*group(rewards, fb), include_feedback=True, feedback_only_without_solution=False)
    assert [rp.feedback for rp in rps] == ["wrong A", None, "ok"]
    assert self_distillation_mask([0.0, 0.0], ["q", "q"], [True, False], include_feedback=True) == [True, False]


def test_exact_template_text_and_system_kept():
    msgs, responses, rewards, uids, fb = group([0.0, 1.0])
    responses[1] = "<think>secret</think>The sum is <answer>5</answer>"
    rp = build_reprompts(msgs, responses, rewards, uids, fb)[0]
    assert rp.messages() == [
        SYSTEM,
        {"role": "user", "content": "What is 2+3?\nCorrect solution:\n\nThe sum is <answer>5</answer>"
                                    "\n\nCorrectly solve the original question."},
    ]
    kept = build_reprompts(msgs, responses, rewards, uids, fb, remove_thinking=False)[0]
    assert "<think>secret</think>" in kept.demonstration
    fb_rp = build_reprompts(*group([0.0], ["bad"]), include_feedback=True)[0]
    assert fb_rp.messages()[-1]["content"] == (
        "What is 2+3?\nThe following is feedback from your unsuccessful earlier attempt:\n\nbad"
        "\n\nCorrectly solve the original question."
    )
    custom = RepromptTemplates(reprompt="{solution}|{prompt}{feedback}", solution="S:{successful_previous_attempt}")
    assert build_reprompts(*group([0.0, 1.0]))[0].messages(custom)[-1]["content"] == "S:response 1|What is 2+3?"


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return AutoTokenizer.from_pretrained(tiny_model_path)


def test_truncation_inside_demonstration_keeps_question_and_header(tok):
    msgs, responses, rewards, uids, fb = group([0.0, 1.0])
    responses[1] = "1+1=2. " * 60 + "<answer>5</answer>"
    rp = build_reprompts(msgs, responses, rewards, uids, fb)[0]
    full, cut = fit_reprompt(tok, rp, max_tokens=10_000)
    assert not cut and full == render_prompt(tok, rp.messages())
    ids, cut = fit_reprompt(tok, rp, max_tokens=len(full) - 100)
    assert cut and len(ids) <= len(full) - 100
    text = tok.decode(ids)
    assert "What is 2+3?" in text  # the question survives
    assert text.endswith("Correctly solve the original question.<|im_end|>\n<|im_start|>assistant\n")
    assert "Correct solution:" in text and text.count("1+1=2.") < 60
    # too small even for an empty demonstration: skipped (masked), reported as truncated
    empty = render_prompt(tok, rp.messages(RepromptTemplates(solution="")))
    assert fit_reprompt(tok, rp, max_tokens=len(empty) - 5) == (None, True)


def test_ema_matches_closed_form():  # docs/specification.md §7 item 8
    torch.manual_seed(0)
    policy = torch.nn.Linear(3, 2)
    theta0 = [p.detach().clone() for p in policy.parameters()]
    teacher = SelfTeacher(policy, mode="ema", rate=0.05)
    history = []
    for step in range(5):
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone() for p in policy.parameters()])
        teacher.update()
    a, n = 0.05, len(history)
    for j, t in enumerate(teacher.weights.parameters()):
        expected = (1 - a) ** n * theta0[j] + sum(a * (1 - a) ** (n - 1 - k) * history[k][j] for k in range(n))
        assert torch.allclose(t, expected, atol=1e-6)
        assert t.dtype == torch.float32 and not t.requires_grad


def test_teacher_modes():
    policy = torch.nn.Linear(2, 2)
    frozen = SelfTeacher(policy, mode="frozen")
    live = SelfTeacher(policy, mode="live")
    assert live.weights is None
    w0 = frozen.weights.weight.clone()
    with torch.no_grad():
        policy.weight.add_(1.0)
    frozen.update()
    assert torch.equal(frozen.weights.weight, w0)
    with pytest.raises(ValueError, match="teacher.mode"):
        SelfTeacher(policy, mode="average")


class _LinearLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 5)

    def forward(self, input_ids, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.emb(input_ids))


def test_trust_region_teacher_is_logit_lerp():  # paper Eq. 6
    from lit_scsdpo.forward import PackedRows

    policy = _LinearLM()
    teacher = SelfTeacher(policy, mode="trust_region", rate=0.3)
    rows = PackedRows.build([[1]], torch.tensor([[2, 3]]), torch.ones(1, 2, dtype=torch.long), pad_id=0)
    ids = torch.tensor([[1, 2, 3]])  # positions 0 and 1 predict the two response tokens
    ref_logits = policy(ids).logits[:, :2].detach().clone()
    with torch.no_grad():
        policy.emb.weight.add_(torch.randn_like(policy.emb.weight))
    cur_logits = policy(ids).logits[:, :2].detach()
    got = teacher.response_logits(rows)
    assert torch.allclose(got, 0.7 * ref_logits + 0.3 * cur_logits, atol=1e-6)
    live = SelfTeacher(policy, mode="live")
    assert torch.allclose(live.response_logits(rows), cur_logits)
    assert not teacher.can_share_prefix()  # not a transformers LM: the packed path
