"""Names the field uses for the same thing: an acronym and its long forms. A topic that is
any one of a group's names matches a paper that uses any other; `explain` and the email say
when a paper matched through one. Operators add groups with the config's `[aliases]` table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

# Each group: the name shown first, then the others. Plurals, hyphens and case need no entry
# of their own: matching normalises them. A long form is an alias only where the field uses
# it as a plain synonym (RLHF's papers say "preference optimization" as often as "RLHF").
BUILTIN: tuple[tuple[str, ...], ...] = (
    ("LLM", "large language model"),
    ("VLM", "vision-language model", "LVLM", "large vision-language model"),
    ("MLLM", "multimodal large language model", "multimodal LLM", "LMM",
     "large multimodal model"),
    ("RL", "reinforcement learning"),
    ("RLHF", "reinforcement learning from human feedback", "RL from human feedback",
     "preference optimization", "preference alignment", "RLAIF"),
    ("RLVR", "reinforcement learning with verifiable rewards", "verifiable rewards"),
    ("DPO", "direct preference optimization"),
    ("PPO", "proximal policy optimization"),
    ("GRPO", "group relative policy optimization"),
    ("RAG", "retrieval-augmented generation"),
    ("MoE", "mixture of experts"),
    ("ViT", "vision transformer"),
    ("DiT", "diffusion transformer"),
    ("LoRA", "low-rank adaptation"),
    ("PEFT", "parameter-efficient fine-tuning"),
    ("SFT", "supervised fine-tuning"),
    ("GNN", "graph neural network"),
    ("NeRF", "neural radiance field"),
    ("3DGS", "3D Gaussian splatting", "Gaussian splatting"),
    ("ASR", "automatic speech recognition", "speech recognition"),
    ("TTS", "text-to-speech", "speech synthesis"),
    ("CoT", "chain of thought"),
    ("ICL", "in-context learning"),
    ("VQA", "visual question answering"),
    ("LRM", "large reasoning model"),
    ("SLM", "small language model"),
    ("GAN", "generative adversarial network"),
    ("VAE", "variational autoencoder"),
    ("NLP", "natural language processing"),
    ("OCR", "optical character recognition"),
    ("VLA", "vision-language-action model"),
    ("SSM", "state space model"),
    ("MCTS", "Monte Carlo tree search"),
    ("KD", "knowledge distillation"),
    ("T2I", "text-to-image"),
    ("T2V", "text-to-video"),
    # words the stemmer keeps apart that people use for one subject
    ("math", "mathematics", "mathematical"),
    ("autonomous driving", "self-driving"),
    ("synthetic data", "data synthesis", "synthesized data"),
    ("data curation", "data filtering", "data selection"),
)


def groups(extra: Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]] = ()
           ) -> tuple[tuple[str, ...], ...]:
    """The built-in groups, then the operator's (`name = [other names]`)."""
    pairs = extra.items() if isinstance(extra, Mapping) else extra
    return BUILTIN + tuple((name, *others) for name, others in pairs)


def acronyms(table: Iterable[tuple[str, ...]]) -> frozenset[str]:
    """The one-word, mostly-uppercase names: their lowercase plural (`llms`) is singular."""
    return frozenset(n.casefold() for g in table for n in g
                     if " " not in n and "-" not in n and sum(c.isupper() for c in n) >= 2)
