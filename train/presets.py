"""Model presets: the only place where sizes live.

Every other module reads dimensions from a checkpoint's config (which is a preset written to
`config.json`), never from literals. `tiny` keeps every architecture of `nextgpt-7b` at CPU size.
"""
from __future__ import annotations

import copy
from typing import Any

SIGNAL_TOKEN_COUNTS = {"image": 4, "video": 24, "audio": 8}
SIGNAL_PREFIX = {"image": "IMG", "video": "VID", "audio": "AUD"}
MEDIA_TAGS = ("<Img>", "</Img>")
PROMPT = {
    "human": "### Human: ",
    "assistant": "\n### Assistant:",
    "media": "<Img>[mm]</Img>",
    "stop": "###",
}


def _sd_scheduler() -> dict[str, Any]:
    return {
        "_class_name": "PNDMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
    }


def _ddim_scheduler() -> dict[str, Any]:
    return {
        "_class_name": "DDIMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    }


def _v_zero_snr(scheduler: dict[str, Any]) -> dict[str, Any]:
    """DDIM with v-prediction on a schedule rescaled to zero terminal SNR, sampled from t = 999
    (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"). The tiny UNets
    train for minutes: with ε-prediction the high-noise steps, where a sample's colours and layout
    are decided, weigh on the loss by their SNR (0.018 at t = 876, where 8 leading steps begin), and at
    SD's schedule the model also learns to read them from the signal left at t = 999, which sampling
    from pure noise does not have. Measured from true captions (held-out, 8 steps): SD's shape and
    colour 70% with ε, 92% with this (64 captions); ZeroScope's motion 12% and 20% (40)."""
    return {
        **{k: v for k, v in scheduler.items() if k != "skip_prk_steps"},
        "_class_name": "DDIMScheduler",
        "clip_sample": False,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
    }


def _vae(in_out: int, latent: int, channels: list[int], groups: int) -> dict[str, Any]:
    n = len(channels)
    return {
        "in_channels": in_out,
        "out_channels": in_out,
        "latent_channels": latent,
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "layers_per_block": 1 if channels[0] < 128 else 2,
        "norm_num_groups": groups,
        "scaling_factor": 0.18215,
    }


# SD's and ZeroScope's VAE (one module, see `shared_vae`): four blocks as SD's, latents 8× smaller
# (8×8 for 64×64), which makes a step of the two UNets 2.6× and 3.5× cheaper than at 16×16
_TINY_PIXEL_VAE = _vae(3, 4, [32, 64, 64, 64], 32)

CAPTION_VOCAB = 256  # ids of the tiny decoders' caption tokenizers


def _tiny_clip_text_encoder(activation: str) -> dict[str, Any]:
    """CLIPTextConfig whose last_hidden_state is max_position_embeddings × hidden_size = embed_tokens ×
    embed_dim. The tiny vocab has no id 49406/49407, so BOS/EOS are its last two ids as in CLIP's
    vocab, and pad = EOS as SD-1.5's tokenizer pads. The world's captions need about 200 tokens
    (caption_tokenizer): of 256 ids 55 stay unused, of 1000 they were 800 embedding rows."""
    return {
        "vocab_size": CAPTION_VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 8,
        "hidden_act": activation,
        "bos_token_id": CAPTION_VOCAB - 2,
        "eos_token_id": CAPTION_VOCAB - 1,
        "pad_token_id": CAPTION_VOCAB - 1,
    }


TINY: dict[str, Any] = {
    "preset": "tiny",
    "imagebind": {
        "out_embed_dim": 32,
        "vision": {
            "image_size": 112,
            "num_frames": 2,
            "kernel": [2, 14, 14],
            "embed_dim": 64,
            "num_blocks": 2,
            "num_heads": 2,
            "mlp_ratio": 4,
            "video_clips": 5,
            "clip_duration": 2.0,
        },
        "audio": {
            "sample_rate": 16000,
            "num_mel_bins": 128,
            "target_length": 204,
            "clip_duration": 2.0,
            "clips": 3,
            "kernel": 16,
            "stride": 10,
            "embed_dim": 64,
            "num_blocks": 2,
            "num_heads": 2,
            "mlp_ratio": 4,
            "logit_scale": 20.0,
            "mean": -4.268,
            "std": 9.138,
            # pitch rows below the log-mel (runtime/preprocess.py `pitch_rows`; not ImageBind's): the
            # tiny trunk does not learn a sound's pitch name from 25 ms log-mel patches alone
            "pitch_classes": 12,
            "octaves": 6,
        },
    },
    "llm": {
        "hidden_size": 128,
        "intermediate_size": 344,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "base_vocab_size": 512,
    },
    "lora": {"r": 8, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]},
    # NExT-GPT's TextFcLayer modes, chosen per output modality (train/projectors.py); the sizes of
    # each mode's layers beside
    "projector": {
        "modes": {"image": "transformer", "video": "transformer", "audio": "transformer"},
        "transformer": {"hidden": 64, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ffn": 128},
        "linear": {},
        "qformer": {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128, "dropout": 0.1},
    },
    "generation": {"max_new_tokens": 48, "temperature": 0.0, "top_p": 1.0},
    "decoders": {
        "image": {
            "name": "sd",
            "embed_tokens": 8,
            "embed_dim": 64,
            "height": 64,
            "width": 64,
            "steps": 8,
            # the tiny UNet, trained for minutes, over-saturates at SD's 7.5 (docs/notes/training-recipe.md)
            "guidance": 1.5,
            # diffusers' UNet2D reads `attention_head_dim` as the head count (its issue 2011): one
            # head per block, 32 and 64 wide
            "unet": {
                "sample_size": 8,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": [32, 64],
                "layers_per_block": 1,
                "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                "cross_attention_dim": 64,
                "attention_head_dim": 1,
                "norm_num_groups": 32,
            },
            "vae": _TINY_PIXEL_VAE,
            "scheduler": _v_zero_snr(_sd_scheduler()),
            "text_encoder": _tiny_clip_text_encoder("quick_gelu"),
        },
        "video": {
            "name": "zeroscope",
            "embed_tokens": 8,
            "embed_dim": 64,
            "height": 64,
            "width": 64,
            "frames": 8,
            "fps": 8,
            "steps": 8,
            # below the reference's 7.5: picked on 120 training captions with the UNet of 1600 steps,
            # every attribute right for 70 at 1.75, 65 at 2, 57 at 3 (docs/notes/training-recipe.md)
            "guidance": 1.75,
            # UNet3D's blocks read `attention_head_dim` as the head width (channels // it heads) and
            # its input temporal attention takes 8 heads of that width: 8 gives heads 8 wide (4 and 8
            # heads in the 32- and 64-channel blocks)
            "unet": {
                "sample_size": 8,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": [32, 64],
                "layers_per_block": 1,
                "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
                "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
                "cross_attention_dim": 64,
                "attention_head_dim": 8,
                "norm_num_groups": 32,
            },
            "vae": _TINY_PIXEL_VAE,
            "shared_vae": "image",  # stored once, with SD's decoder (train/model.py, shared_parts)
            "scheduler": _v_zero_snr(_ddim_scheduler()),
            # gelu like ZeroScope's OpenCLIP text encoder
            "text_encoder": _tiny_clip_text_encoder("gelu"),
        },
        "audio": {
            "name": "audioldm",
            "embed_tokens": 1,
            "embed_dim": 32,
            "sample_rate": 16000,
            "audio_length_s": 1.0,
            "steps": 8,
            "guidance": 5.0,  # picked on the training captions (docs/notes/training-recipe.md)
            "unet": {
                "sample_size": 8,
                "in_channels": 8,
                "out_channels": 8,
                "block_out_channels": [32, 64],
                "layers_per_block": 1,
                "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
                "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
                "cross_attention_dim": [32, 64],
                "attention_head_dim": 1,
                "norm_num_groups": 32,
                "class_embed_type": "simple_projection",
                "projection_class_embeddings_input_dim": 32,
                "class_embeddings_concat": True,
            },
            # three blocks: a 32-frame, 32-bin mel to 8×8 latents, where a step of the UNet costs
            # 0.4 of one at two blocks' 16×16
            "vae": _vae(1, 8, [32, 32, 64], 32),
            # a hop of 500 samples, not AudioLDM's 160: on a steady mel a convolutional vocoder repeats
            # every hop, so it can only hold multiples of rate / hop; at 100 Hz none of the world's
            # pitches is one and its chirps come out as steps of tones (docs/notes/training-recipe.md)
            "vocoder": {
                "model_in_dim": 32,
                "sampling_rate": 16000,
                "upsample_initial_channel": 64,
                "upsample_rates": [5, 5, 5, 4],
                "upsample_kernel_sizes": [10, 10, 10, 8],
                "resblock_kernel_sizes": [3],
                "resblock_dilation_sizes": [[1, 3]],
                "normalize_before": False,
            },
            "scheduler": _v_zero_snr(_ddim_scheduler()),
            # ClapTextConfig: text_embeds is 1 × projection_dim = 1 × embed_dim. RoBERTa's special ids, as
            # AudioLDM's tokenizer. AudioLDM pads "" to projection_dim tokens and RoBERTa positions start
            # after the pad id: max_position_embeddings = projection_dim + 2 (CLAP: 514 for 512).
            "text_encoder": {
                "vocab_size": CAPTION_VOCAB,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": 34,
                "projection_dim": 32,
                "bos_token_id": 0,
                "pad_token_id": 1,
                "eos_token_id": 2,
            },
        },
    },
}


def _nextgpt_7b() -> dict[str, Any]:
    p = copy.deepcopy(TINY)
    p["preset"] = "nextgpt-7b"
    p["imagebind"]["out_embed_dim"] = 1024
    p["imagebind"]["vision"].update(image_size=224, embed_dim=1280, num_blocks=32, num_heads=16)
    p["imagebind"]["audio"].update(embed_dim=768, num_blocks=12, num_heads=12, pitch_classes=0, octaves=0)
    p["llm"] = {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "base_vocab_size": 32000,
    }
    p["lora"] = {"r": 32, "alpha": 32, "dropout": 0.1, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    p["projector"]["transformer"] = {"hidden": 512, "heads": 4, "encoder_layers": 4, "decoder_layers": 4, "ffn": 2048}
    # bert-base-uncased's widths at two layers, as the reference's init_Qformer
    p["projector"]["qformer"] = {"hidden": 768, "layers": 2, "heads": 12, "ffn": 3072, "dropout": 0.1}
    p["generation"] = {"max_new_tokens": 246, "temperature": 0.4, "top_p": 0.01}
    dec = p["decoders"]
    # the released decoders' own ε-prediction schedulers (the tiny ones are v-prediction, zero SNR)
    for modality, scheduler in {"image": _sd_scheduler(), "video": _ddim_scheduler(), "audio": _ddim_scheduler()}.items():
        dec[modality]["scheduler"] = scheduler
    dec["image"].update(embed_tokens=77, embed_dim=768, height=512, width=512, steps=50, guidance=7.5)
    dec["image"]["unet"] = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }
    dec["image"]["vae"] = _vae(3, 4, [128, 256, 512, 512], 32)
    # SD-1.5's CLIP ViT-L/14 text encoder; its tokenizer gives "" as [49406, 49407, 49407, ...]
    dec["image"]["text_encoder"].update(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    dec["video"].update(embed_tokens=77, embed_dim=1024, height=320, width=576, frames=24, steps=50)
    dec["video"]["unet"] = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "down_block_types": ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
        "up_block_types": ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3,
        "cross_attention_dim": 1024,
        "attention_head_dim": 64,
        "norm_num_groups": 32,
    }
    dec["video"]["vae"] = _vae(3, 4, [128, 256, 512, 512], 32)
    # ZeroScope's OpenCLIP ViT-H/14 text encoder (penultimate layer kept, as in SD 2)
    dec["video"]["text_encoder"].update(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    dec["audio"].update(embed_tokens=1, embed_dim=512, audio_length_s=9.0, steps=50, guidance=7.5)
    dec["audio"]["unet"] = {
        "sample_size": 128,
        "in_channels": 8,
        "out_channels": 8,
        "block_out_channels": [192, 384, 576, 960],
        "layers_per_block": 2,
        "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * 3,
        "up_block_types": ["CrossAttnUpBlock2D"] * 3 + ["UpBlock2D"],
        "cross_attention_dim": [192, 384, 576, 960],
        "attention_head_dim": 8,
        "norm_num_groups": 32,
        "class_embed_type": "simple_projection",
        "projection_class_embeddings_input_dim": 512,
        "class_embeddings_concat": True,
    }
    dec["audio"]["vae"] = _vae(1, 8, [128, 256, 512], 32)
    # AudioLDM's CLAP text encoder (RoBERTa-base, projected to 512)
    dec["audio"]["text_encoder"].update(
        vocab_size=50265,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=514,
        projection_dim=512,
    )
    dec["audio"]["vocoder"] = {
        "model_in_dim": 64,
        "sampling_rate": 16000,
        "upsample_initial_channel": 1024,
        "upsample_rates": [5, 4, 2, 2, 2],
        "upsample_kernel_sizes": [16, 16, 8, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        "normalize_before": True,
    }
    return p


def _nextgpt_7b_shallow() -> dict[str, Any]:
    """`nextgpt-7b`'s widths at reduced depth: every matrix, vocabulary, channel count, image, video and
    audio size as published, with two LLM layers and the fewest blocks and layers elsewhere. Random
    weights; it exists to prove the full-width export path (external data past 2 GB: the LLM alone is
    about 2.7 GB in fp32) on a machine without a GPU."""
    p = _nextgpt_7b()
    p["preset"] = "nextgpt-7b-shallow"
    for trunk in ("vision", "audio"):
        p["imagebind"][trunk]["num_blocks"] = 1
    p["llm"]["num_hidden_layers"] = 2
    p["projector"]["transformer"].update(encoder_layers=1, decoder_layers=1)
    for dec in p["decoders"].values():
        unet = dec["unet"]
        unet.update(
            block_out_channels=unet["block_out_channels"][:2],
            down_block_types=unet["down_block_types"][:2],
            up_block_types=unet["up_block_types"][-2:],
            layers_per_block=1,
        )
        if isinstance(unet["cross_attention_dim"], list):
            unet["cross_attention_dim"] = unet["cross_attention_dim"][:2]
        dec["vae"]["layers_per_block"] = 1
        dec["text_encoder"]["num_hidden_layers"] = 1
    p["decoders"]["audio"]["vocoder"].update(resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]])
    return p


# What benchmarks/full_width.py runs `nextgpt-7b`'s components at (issue 29): ZeroScope at 8 of its 24
# frames (a 24-frame step holds 3x the activations), the LLM as a few of its 32 layers, extrapolated
# to 32, over a 128-token prompt and one decode step after it; int8 calibrated on 4 seeded samples
FULL_WIDTH_BENCHMARK: dict[str, Any] = {
    "video_frames": 8, "llm_layers": 2, "prefill_tokens": 128, "decode_past": 128, "calibration_samples": 4,
}


PRESETS: dict[str, dict[str, Any]] = {"tiny": TINY, "nextgpt-7b": _nextgpt_7b(), "nextgpt-7b-shallow": _nextgpt_7b_shallow()}


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of the named preset, so callers can edit it freely."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


def signal_tokens(modality: str, counts: dict[str, int] = SIGNAL_TOKEN_COUNTS) -> list[str]:
    """`[IMG0]`..`[IMG3]` and friends: the signal-token run of one output modality."""
    return [f"[{SIGNAL_PREFIX[modality]}{i}]" for i in range(counts[modality])]


def added_tokens() -> list[str]:
    """The 38 tokens NExT-GPT adds to the LLaMA vocabulary, in the reference's order."""
    return [*MEDIA_TAGS, *(t for m in SIGNAL_TOKEN_COUNTS for t in signal_tokens(m))]


# The synthetic world (train/synthetic.py): media sizes and how many records of each kind it writes.
# Counts are per split; every record renders its own attribute combination, so a count above the
# number of combinations the split holds is refused.
WORLD: dict[str, Any] = {
    "image_size": 64,
    "video_size": 64,
    "video_frames": 8,
    "fps": 8.0,
    "sample_rate": 16000,
    "audio_seconds": 1.0,
    "heldout_fraction": 0.2,  # of every modality's attribute combinations, never rendered for train
    "multi_turn_fraction": 0.25,
    # modalities whose every rendered train combination is also requested in every phrasing, as extra
    # text→X records: 115 sounds give stages 2-3 too few requests to generalise from
    # (docs/notes/training-recipe.md)
    "every_request": ["audio"],
    # and whose every rendered train combination is also described in each phrasing, as extra X->text
    # records: stage 1 otherwise reads 57 of the 115 sounds (docs/notes/training-recipe.md)
    "every_description": ["audio"],
    # render variants per held-out combination (synthetic.render_variant) where combinations are few
    "heldout_renders": {"audio": 5},
    # how the train split's input media vary (synthetic.draw_look), as a user's files do: a medium of an
    # X→text train record is rendered this way with probability `fraction`, else plainly; held-out media
    # and what the decoders learn to draw stay plain (docs/training.md)
    "varied": {
        "fraction": 0.75,
        "image_long_side": (48, 1024),
        "aspects": (0.5, 2.0),  # width / height
        "scale": (0.65, 1.35),  # the shape's size against the plain render's
        "jitter": 0.06,  # of the centred square's side, around the named place (0.25 from the centre)
        "colour_jitter": 16,  # per channel: each colour stays nearest its own name (the closest two, yellow and orange, are 83 apart; a jitter moves one by at most 28)
        "noise": (0.0, 6.0),  # Gaussian, in 8-bit levels
        "antialias": 4,  # supersampled edges, fewer where the long side passes 512 (memory)
        "image_formats": (".png", ".jpg", ".webp"),
        "quality": (70, 95),  # JPEG and WebP
        "video_long_side": (48, 160),
        "video_fps": (4, 6, 8, 12, 15),  # one second of frames at each
        "video_formats": (".mp4", ".webm", ".gif"),
        "levels_dbfs": (-35.0, 0.0),  # a sound's peak
        "sample_rates": (8000, 11025, 16000, 22050, 32000, 44100, 48000),
        "cents": 20.0,  # detuning, either way
        "noise_dbfs": (-70.0, -45.0),  # white noise's RMS
        "audio_formats": (".wav", ".mp3", ".ogg"),
    },
    "counts": {
        # every combination of the train split is rendered once (1344 images, 1612 videos, 115 sounds),
        # as is every held-out sound (29 of 144)
        "train": {"image": 700, "video": 800, "audio": 57, "text_to_image": 644, "text_to_video": 812, "text_to_audio": 58},
        # 60 a task, so one sample is under 2 points; the 29 held-out sounds are rendered 5 times each
        "heldout": {"image": 60, "video": 60, "audio": 60, "text_to_image": 60, "text_to_video": 60, "text_to_audio": 60},
    },
    # multi-turn conversations per kind (train/conversations.py), written beside the world's records;
    # stage 3 trains on the train ones with the single-turn records. Held out: 60 per follow-up task
    # (ask + compare: follow-up X→text; transform + switch: follow-up text→X)
    "conversations": {
        "train": {"ask": 300, "compare": 150, "transform": 450, "switch": 150},
        "heldout": {"ask": 40, "compare": 20, "transform": 45, "switch": 15},
    },
}
