"""The language model: LLaMA from transformers, the NExT-GPT added tokens, LoRA through peft."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from train.presets import added_tokens

SPECIAL = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def train_tiny_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE with LLaMA's special tokens at ids 0..2, so any text encodes."""
    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL["unk_token"], **SPECIAL)


def add_nextgpt_tokens(tokenizer: Any) -> dict[str, int]:
    """Add `<Img> </Img> [IMG0..] [VID0..] [AUD0..]` as the reference does; return their ids."""
    tokenizer.add_tokens(added_tokens())
    return {t: tokenizer.convert_tokens_to_ids(t) for t in added_tokens()}


def load_tokenizer(folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def llama_config(llm: dict[str, Any], vocab_size: int) -> LlamaConfig:
    sizes = {k: v for k, v in llm.items() if k not in ("base_vocab_size", "vocab_size", "dtype")}
    return LlamaConfig(vocab_size=vocab_size, tie_word_embeddings=False, **sizes)


def build_llm(llm: dict[str, Any], vocab_size: int) -> LlamaForCausalLM:
    model = LlamaForCausalLM(llama_config(llm, vocab_size))
    return model.eval()


def lora_config(lora: dict[str, Any]) -> LoraConfig:
    return LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        lora_dropout=lora["dropout"],
        target_modules=list(lora["targets"]),
        task_type="CAUSAL_LM",
    )


def with_lora(model: LlamaForCausalLM, lora: dict[str, Any]) -> PeftModel:
    return get_peft_model(model, lora_config(lora)).eval()


def lora_state_dict(model: PeftModel) -> dict[str, torch.Tensor]:
    return get_peft_model_state_dict(model)


def load_lora_state_dict(model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    """Assigned (peft's low_cpu_mem_usage path), so the adapter may have been built on the meta device."""
    set_peft_model_state_dict(model, state, low_cpu_mem_usage=True)
