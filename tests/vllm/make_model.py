"""Build a small Llama with random weights and a byte-level BPE tokenizer with a chat template.

Run with the vLLM environment's Python (it has transformers, tokenizers and torch; the project's
environment need not): `python make_model.py OUT_DIR`. Seconds on a CPU; the weights are random, so
the text is gibberish, but vLLM serves it exactly as it would a real model: tokenisation, chat
template, KV cache, scheduling and metrics are all real. 155M parameters (300 MB), so that it decodes
at tens of tokens per second on one core: a long request then lasts minutes, longer than a busy
machine stalls the tests (at 4 layers of 256 it finished 8,000 tokens in 13 s, and a test stalled 13 s).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<unk>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
WORDS = ("the router sends each request to a pod where the engine decodes tokens one step at a time while "
         "the scheduler keeps short jobs ahead of long ones and memory is shared by every running sequence "
         "hello there how are you today please write a story about a cat and a dog who count numbers")


def corpus() -> list[str]:
    """A few KB of text: enough for a BPE vocabulary of common English fragments."""
    words = WORDS.split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(24)) for i in range(400)]


def build_tokenizer(out: Path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   model_max_length=8192)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(out: Path, tokenizer: PreTrainedTokenizerFast) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
        num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, torch_dtype="bfloat16",
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    build_model(out, build_tokenizer(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
