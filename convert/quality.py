"""Measuring and healing a conversion: held-out text, perplexity, logit KL against the source, and a short continued
pretraining with plain `transformers.Trainer` (SPEC §9.7). Used by `bench/convert_quality.py` and
`examples/heal_converted.py`.
"""

from __future__ import annotations

import math

import torch


def split_documents(documents, held_out_fraction: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held-out) by whole documents, a fixed random `held_out_fraction` of them held out (at least one)."""
    documents = list(documents)
    order = torch.randperm(len(documents), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[: max(1, round(len(documents) * held_out_fraction))])
    return ([d for i, d in enumerate(documents) if i not in held], [d for i, d in enumerate(documents) if i in held])


def token_rows(tokenizer, documents, seq_len: int) -> torch.Tensor:
    """Tokenize documents (EOS after each), concatenate, cut into [N, seq_len] long rows (the remainder dropped).

    Raises:
        ValueError: fewer than seq_len tokens.
    """
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stream = []
    for doc in documents:
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"{len(stream)} tokens are fewer than one row of {seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


@torch.no_grad()
def evaluate(model, rows: torch.Tensor, reference=None, batch: int = 16) -> tuple[float, float | None]:
    """(perplexity of next-token prediction on rows [N, S], mean KL(reference ‖ model) per token in nats or None).

    `reference` is the source model, run on the same batches (nothing is stored between batches)."""
    model.eval()
    nll, count, kl = 0.0, 0, 0.0
    for i in range(0, len(rows), batch):
        ids = rows[i : i + batch]
        logprobs = torch.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), -1)  # [b, S, V]
        nll -= logprobs[:, :-1].gather(-1, ids[:, 1:, None]).sum().item()
        count += ids[:, 1:].numel()
        if reference is not None:
            ref = torch.log_softmax(reference(input_ids=ids, use_cache=False).logits.float(), -1)
            kl += (ref.exp() * (ref - logprobs)).sum().item()
    return math.exp(nll / count), (kl / rows.numel() if reference is not None else None)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def heal(model, train_rows: torch.Tensor, steps: int, output_dir, learning_rate: float = 2e-4, batch: int = 16,
         seed: int = 0) -> list[dict]:
    """Continued pretraining of `model` (in place) on train_rows [N, S] for `steps` optimizer steps with plain
    `transformers.Trainer` (AdamW, cosine schedule, 10% warm-up, CPU or the available accelerator).

    Returns the Trainer's log history (loss every steps/5 steps)."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch, learning_rate=learning_rate,
        lr_scheduler_type="cosine", warmup_steps=max(1, steps // 10), weight_decay=0.0,
        logging_steps=max(1, steps // 5), save_strategy="no", report_to=[], dataloader_num_workers=0, seed=seed,
    )
    model.train()
    trainer = Trainer(model=model, args=args, train_dataset=_Rows(train_rows))
    trainer.train()
    model.eval()
    return trainer.state.log_history
