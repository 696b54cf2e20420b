"""The shapes a decoder runs: prefill (rows, seq) and decode (rows, cache blocks per row)."""

from __future__ import annotations

from dataclasses import dataclass

from ember.runner.compile import MIN_DIM


@dataclass(frozen=True, slots=True)
class DecoderShapePlan:
    """Prefill batches snap to >= 2 rows and columns; decode batches to >= 2 rows and blocks,
    so that no dynamic dimension is ever specialized on 1. The first shape of each warm-up
    compiles a static graph; the second, with every batch dimension changed to values distinct
    from each other, compiles the dynamic one (dynamo's automatic dynamic shapes) that serves
    the rest."""

    max_batch: int
    max_seq: int
    max_tokens: int
    max_blocks: int

    def snap(self, num_seqs: int, longest: int) -> tuple[int, int]:
        assert 1 <= num_seqs <= self.max_batch and 1 <= longest <= self.max_seq, (num_seqs, longest)
        return max(num_seqs, MIN_DIM), max(longest, MIN_DIM)

    def prefill_shapes(self) -> list[tuple[int, int]]:
        """Compile shape, corners, then the maximum token batch (the memory-profiling forward)."""
        first, second = (min(3, self.max_batch), min(11, self.max_seq)), (min(5, self.max_batch), min(7, self.max_seq))
        rows_at_max = max(MIN_DIM, min(self.max_batch, self.max_tokens // self.max_seq))
        corners = [(MIN_DIM, MIN_DIM), (self.max_batch, MIN_DIM), (MIN_DIM, self.max_seq)]
        return list(dict.fromkeys([first, second, *corners, (rows_at_max, self.max_seq)]))

    def warmup_shapes(self) -> list[tuple[int, int]]:
        """Decode shapes (rows, blocks per row) warmed by compile_or_warm_up."""
        first, second = (min(3, self.max_batch), min(5, self.max_blocks)), (min(5, self.max_batch), min(3, self.max_blocks))
        rows = sorted({MIN_DIM, min(8, self.max_batch), self.max_batch})
        blocks = sorted({MIN_DIM, self.max_blocks})
        return list(dict.fromkeys([first, second, *((r, b) for r in rows for b in blocks)]))
