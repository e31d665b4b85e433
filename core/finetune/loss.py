"""The finetune loss: the output layer only where labels are, in chunks.

Gemma's 262k vocabulary makes the output layer as costly as the whole body when logits are computed
for every position; here they are computed only at label positions, a chunk at a time.
"""

from __future__ import annotations

from core.finetune.data import IGNORE


def linear_cross_entropy():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """Summed cross-entropy of (h @ W.T) against targets without materialising all logits.

        The output layer is frozen (LoRA never adapts it here), so the gradient with respect to `h`
        is computed chunk by chunk in the forward pass and stored (n x hidden, small); the logits of
        one chunk are the only vocabulary-sized tensor alive at any time.
        """

        @staticmethod
        def forward(ctx, h, weight, targets, chunk, softcap):
            n = h.shape[0]
            total = torch.zeros((), dtype=torch.float32, device=h.device)
            grad = torch.empty_like(h)
            for s in range(0, n, chunk):
                logits = (h[s : s + chunk] @ weight.t()).float()
                if softcap:
                    tanh = torch.tanh(logits / softcap)
                    logits = tanh * softcap
                tgt = targets[s : s + chunk]
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, tgt[:, None]).squeeze(1)).sum()
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(tgt.shape[0], device=h.device), tgt] -= 1.0
                if softcap:
                    probs.mul_(1.0 - tanh * tanh)
                grad[s : s + chunk] = probs.to(weight.dtype) @ weight
            ctx.save_for_backward(grad)
            return total

        @staticmethod
        def backward(ctx, g):
            (grad,) = ctx.saved_tensors
            return grad * g.to(grad.dtype), None, None, None, None

    return LinearCrossEntropy


def trainable_module(peft_model, logit_chunk: int, loss_impl: str = "chunked"):
    """A module whose forward returns (summed loss, label count): DDP-wrappable by accelerate."""
    import torch

    lce = linear_cross_entropy()
    causal_lm = peft_model.get_base_model()
    body = causal_lm.model
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None) or 0.0

    class Trainable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.peft = peft_model

        def forward(self, input_ids, attention_mask, labels):
            if loss_impl == "full":  # the model's own loss: logits for every position and the whole vocabulary
                n = (labels[:, 1:] != IGNORE).sum()
                out = self.peft(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
                return out.loss * n, n
            hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            targets = labels[:, 1:]
            mask = targets != IGNORE
            h = hidden[:, :-1][mask]
            t = targets[mask]
            loss_sum = lce.apply(h, head.weight, t, logit_chunk, softcap)
            return loss_sum, mask.sum()

    return Trainable()
