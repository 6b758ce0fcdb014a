"""A tiny random Llama with a tokenizer built in code: tests exercise every LLM code path offline in milliseconds.

The tokenizer is a WordPiece over a fixed vocabulary (special tokens, single characters, ``##``-continuation
characters and a few hundred common English words), so any ASCII text tokenizes without an unknown token and no
file or download is involved. It mirrors SmolLM2 where that matters to the code under test: a ChatML chat
template, ``<|im_start|>`` as bos, ``<|im_end|>`` as eos, and a pad token equal to eos (which
:func:`explainrec.llm.load.ensure_pad_token` then replaces by a distinct ``<|pad|>``).
"""
from __future__ import annotations

import string

import torch

TINY_SPECIAL_TOKENS = ("[UNK]", "<|endoftext|>", "<|im_start|>", "<|im_end|>")

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Common English words plus the vocabulary of recommendation explanations ("The user would enjoy ...").
_WORDS = """
the a an and or but if then than so because as of to in on at by for with from about into over after before
between through during without under while up down out off again further once here there when where why how
all any both each few more most other some such no nor not only own same too very can will just should now
is are was were be been being have has had having do does did doing would could might must shall may
i me my we our you your he him his she her it its they them their what which who whom this that these those
user users item items enjoy enjoys enjoyed enjoyable like likes liked love loves loved prefer prefers want wants
would recommend recommended recommendation explanation explain reason reasons why
book books novel story stories author series read reading reader page pages character characters plot romance
mystery fantasy history science fiction adventure thriller classic funny humor drama
business restaurant food foods dish dishes meal menu taste tasty delicious fresh spicy sweet coffee tea drink
drinks bar pizza burger tacos sushi breakfast lunch dinner service staff friendly fast slow clean price prices
cheap affordable expensive quality great good best better nice excellent amazing wonderful perfect bad poor
place places location area city town store shop shopping market hotel room park museum theater music movie
movies film films show shows game games product products price value experience atmosphere ambiance cozy
casual family kids friends people time times day days night week year years new old small large big little
long short high low first last many much well also even still really always often never sometimes usually
make makes made get gets got go goes went come comes came see sees saw find finds found give gives gave take
takes took know knows knew think thinks thought feel feels felt look looks looked use uses used try tries
tried offer offers offered provide provides provided appreciate appreciates appreciated
interest interests interested fan fans favorite favourite style styles type types kind kinds genre genres
profile profiles feature features title rating ratings review reviews star stars one two three four five
sentence sentences write answer question system assistant helpful
""".split()


def tiny_vocab() -> list[str]:
    """The fixed vocabulary, in id order: special tokens, characters, ``##`` continuations, then words."""
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    continuation = ["##" + c for c in string.ascii_lowercase + string.digits]
    out: list[str] = []
    seen: set[str] = set()
    for tok in (*TINY_SPECIAL_TOKENS, *chars, *continuation, *_WORDS):
        if tok not in seen:
            seen.add(tok)
            out.append(tok)
    return out


def build_tiny_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :func:`tiny_vocab` (lower-cased WordPiece, ChatML template)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(tiny_vocab())}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",  # like SmolLM2: pad == eos until ensure_pad_token fixes it
        additional_special_tokens=["<|endoftext|>"],
        model_max_length=512,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llm(seed: int = 0):
    """A random-init ``LlamaForCausalLM`` (hidden 64, 2 layers, 4 heads, 2 kv heads) and its tokenizer.

    The weights depend on ``seed`` only: they are drawn inside ``torch.random.fork_rng`` so the caller's global
    RNG state is left untouched. Returns ``(model, tokenizer)`` in float32 on CPU, in eval mode, pad == eos.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        # Wide init (std 0.3, not 0.02): a random model then continues each prompt differently instead of
        # repeating its last token, so tests comparing generations can actually tell prompts and positions apart.
        initializer_range=0.3,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.float().eval(), tokenizer
