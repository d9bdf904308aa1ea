"""Prompt-lookup drafts for exact speculative greedy decoding.

Small models' greedy continuations copy a lot: a BBH answer restates the question and then
starts a new "Q: ..." from the few-shot prompt; a fluency answer loops. When the last few
tokens already occurred earlier in the prompt or the output, the tokens that followed them
then are a good guess for what follows now (Saxena 2023, "prompt lookup decoding"). The
engine checks such a draft in one forward pass and keeps exactly the tokens greedy decoding
would have produced, so the output does not depend on the draft (up to float32 summation
order): a wrong draft only costs compute.

Simulated on the reference's own Stephen King outputs, drafts of up to 8 tokens let BBH
advance 4.2 tokens per forward pass and fluency 2.4.
"""

from __future__ import annotations

from collections.abc import Iterable


class PromptLookup:
    """Most recent earlier occurrence of the context's last ``n`` tokens, for n = max_n..1.

    ``index[n]`` maps an n-gram to the position right after its latest occurrence whose
    continuation is known, so a lookup is a dictionary hit, not a scan of the context.
    """

    def __init__(self, tokens: Iterable[int], max_n: int = 4) -> None:
        self.max_n = max_n
        self.tokens: list[int] = []
        self.index: list[dict[tuple[int, ...], int]] = [{} for _ in range(max_n + 1)]
        self.extend(tokens)

    def extend(self, tokens: Iterable[int]) -> None:
        ctx = self.tokens
        for tok in tokens:
            end = len(ctx)  # the n-grams ending here now have a continuation: ``tok``
            for n in range(1, self.max_n + 1):
                if end >= n:
                    self.index[n][tuple(ctx[end - n : end])] = end
            ctx.append(tok)

    def draft(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the longest recent match of the context's tail."""
        if k <= 0:
            return []
        ctx = self.tokens
        for n in range(min(self.max_n, len(ctx)), 0, -1):
            start = self.index[n].get(tuple(ctx[-n:]))
            if start is not None:
                return ctx[start : start + k]
        return []
