"""GenerationEngine: text generation on a decoder runner. step() = schedule, execute, update."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence as Seq

import torch

from ember.config import EngineConfig
from ember.engine.gen_scheduler import GenerationScheduler
from ember.engine.sequence import Sequence
from ember.errors import BatchFailedError, InvalidRequestError
from ember.outputs import CompletionOutput, RequestOutput
from ember.params import SamplingParams
from ember.runner.block_manager import BlockManager
from ember.runner.decoder_runner import DecoderModelRunner
from ember.runner.sampler import sample

logger = logging.getLogger(__name__)


class GenerationEngine:
    """Owns the cache bookkeeping and the generation queue of one decoder. Not thread-safe."""

    def __init__(self, runner: DecoderModelRunner, config: EngineConfig) -> None:
        self.runner = runner
        self.info = runner.info
        self.blocks = BlockManager(runner.num_kv_blocks, runner.kv_spec.block_size)
        self.scheduler = GenerationScheduler(config.scheduler_config, self.blocks, runner.plan.max_tokens)
        self._ids = itertools.count()
        self.num_prefill_steps = 0
        self.num_decode_steps = 0
        self.num_generated_tokens = 0

    def make_sequences(self, prompts: Seq[str | list[int]], token_ids: Seq[list[int]],
                       params: Seq[SamplingParams]) -> list[Sequence]:
        """Sequences for prompts the processor tokenized and checked; each params is verified and
        the context length checked (nothing is queued, so one bad prompt rejects the call)."""
        out = []
        for prompt, ids, p in zip(prompts, token_ids, params):
            if not isinstance(p, SamplingParams):
                raise InvalidRequestError(f"sampling_params must be SamplingParams, got {type(p).__name__}",
                                          param="sampling_params")
            p.verify(self.info)
            generator = None if p.seed is None else torch.Generator().manual_seed(p.seed)
            out.append(Sequence(f"gen-{next(self._ids)}", ids, "generate",
                                prompt=prompt if isinstance(prompt, str) else None, params=p,
                                max_tokens=p.tokens_to_generate(len(ids), self.info), generator=generator))
        return out

    def add(self, seq: Sequence) -> None:
        self.scheduler.add(seq)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def step(self) -> list[Sequence]:
        """Run one prefill or decode step; returns the sequences that finished in it."""
        kind, seqs = self.scheduler.schedule()
        if not seqs:
            return []
        try:
            logits = self._execute(kind, seqs)
        except Exception as exc:
            error = BatchFailedError(f"model execution failed in a {kind} step of {len(seqs)} sequences: {exc}")
            for seq in seqs:
                self.scheduler.finish(seq)
                seq.finish(error=error)
            raise error from exc
        tokens = sample(logits, [s.params for s in seqs], [s.generator for s in seqs])
        finished = []
        for seq, token in zip(seqs, tokens):
            self._append(seq, token)
            if seq.on_update is not None:
                seq.on_update(seq)
            if seq.is_finished:
                self.scheduler.finish(seq)
                seq.finish()
                finished.append(seq)
        self.num_generated_tokens += len(seqs)
        return finished

    def _execute(self, kind: str, seqs: list[Sequence]) -> torch.Tensor:
        tables = [s.block_table for s in seqs]
        if kind == "prefill":
            self.num_prefill_steps += 1
            return self.runner.prefill([s.all_token_ids for s in seqs], tables)
        self.num_decode_steps += 1
        return self.runner.decode([s.output_token_ids[-1] for s in seqs], [s.num_tokens - 1 for s in seqs], tables)

    def _append(self, seq: Sequence, token: int) -> None:
        """Add a sampled token and decide whether the sequence is done (stop ids, EOS, stop strings, length)."""
        seq.output_token_ids.append(token)
        p, num_out = seq.params, len(seq.output_token_ids)
        can_stop = num_out >= p.min_tokens
        tok = self.runner.tokenizer
        seq.text = tok.decode(seq.output_token_ids, skip_special_tokens=p.skip_special_tokens)
        if can_stop and token in (p.stop_token_ids or ()):
            seq.stop("stop", token)
        elif can_stop and not p.ignore_eos and token in self.runner.eos_token_ids:
            seq.stop("stop")
        elif can_stop and (hit := _find_stop(seq.text, p.stop_strings)) is not None:
            seq.text = seq.text[: hit[0]]
            seq.stop("stop", hit[1])
        elif num_out >= seq.max_tokens:
            seq.stop("length")

    def stats(self) -> dict[str, int]:
        return {
            "num_kv_blocks": self.blocks.num_blocks,
            "num_free_kv_blocks": self.blocks.num_free_blocks,
            "num_preemptions": self.scheduler.num_preemptions,
            "num_prefill_steps": self.num_prefill_steps,
            "num_decode_steps": self.num_decode_steps,
            "num_generated_tokens": self.num_generated_tokens,
        }


def _find_stop(text: str, stops: list[str]) -> tuple[int, str] | None:
    hits = [(text.find(s), s) for s in stops if s in text]
    return min(hits) if hits else None


def to_output(seq: Sequence) -> RequestOutput:
    completion = CompletionOutput(0, seq.text, list(seq.output_token_ids), seq.finish_reason, seq.stop_reason)
    return RequestOutput(seq.request_id, seq.prompt, seq.prompt_token_ids, [completion], seq.is_finished)
