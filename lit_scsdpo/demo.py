"""Smallest real run of the loss core (until the RL loop lands): a toy student of 8 questions
× 4 rollouts is distilled toward a fixed teacher with SC-SDPO question weights, by SGD on its
logits. Prints the weights and the falling loss."""

import torch

from lit_scsdpo import losses as L


def main(steps: int = 50) -> None:
    torch.manual_seed(0)
    B, G, T, V = 8, 4, 6, 32
    rewards = (torch.rand(B, G) < torch.linspace(0, 1, B)[:, None]).float()
    w_q = L.difficulty_weights(rewards)
    print("pass rates :", [round(p, 2) for p in L.pass_rates(rewards).tolist()])
    print("weights w_q:", [round(w, 3) for w in w_q.tolist()])
    student = torch.randn(B * G, T, V, requires_grad=True)
    teacher = torch.randn(B * G, T, V)
    mask = torch.ones(B * G, T)
    opt = torch.optim.SGD([student], lr=20.0)
    for step in range(steps + 1):
        per_tok = L.distillation_loss(student, teacher, alpha=0.5, topk=8)
        loss = L.aggregate_loss(per_tok, mask, weights=w_q.repeat_interleave(G))
        if step % 10 == 0:
            print(f"step {step:3d}  SC-SDPO loss {loss.item():.4f}")
        opt.zero_grad()
        loss.backward()
        opt.step()


if __name__ == "__main__":
    main()
