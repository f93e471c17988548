"""Tokenizers, streaming detokenization and chat templates (checked against transformers)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from engine.chat import ChatTemplateError, encode_chat, render_chat
from engine.model.loader import load_model
from engine.model.tiny import CHAT_TEMPLATE as TINY_TEMPLATE
from engine.model.tiny import SPECIAL_TOKENS as TINY_SPECIAL_TOKENS
from engine.tokenizer import ByteTokenizer, Detokenizer, HFTokenizer
from tests.engine.test_loader import write_checkpoint

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

TEXT = "héllo 世界 🎉, naïve café ½ — ok"
CORPUS = ["hello world, the quick brown fox jumps over the lazy dog. héllo café"] * 20
CHATML_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
# Mistral-7B-Instruct-v0.2's: "[INST]" is plain text, the answer is written untrimmed after a
# space, the system message joins the first user message.
MISTRAL_V2_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must"
    " alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exception"
    " of an initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)
# Mistral-7B-Instruct-v0.3's without its tool-calling branches ("[INST]" and "[/INST]" are
# special tokens there): the answer is trimmed and written after a space, the system
# message joins the LAST user message.
MISTRAL_V3_TEMPLATE = (
    '{%- if messages[0]["role"] == "system" %}\n'
    '    {%- set system_message = messages[0]["content"] %}\n'
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "{%- set ns = namespace() %}\n"
    "{%- set ns.index = 0 %}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}\n'
    '        {{- raise_exception("After the optional system message, conversation roles must'
    ' alternate user/assistant/user/assistant/...") }}\n'
    "    {%- endif %}\n"
    "    {%- set ns.index = ns.index + 1 %}\n"
    "{%- endfor %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    '    {%- if message["role"] == "user" %}\n'
    "        {%- if loop.last and system_message is defined %}\n"
    '            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}\n'
    "        {%- else %}\n"
    '            {{- "[INST] " + message["content"] + "[/INST]" }}\n'
    "        {%- endif %}\n"
    '    {%- elif message["role"] == "assistant" %}\n'
    '        {{- " " + message["content"]|trim + eos_token}}\n'
    "    {%- else %}\n"
    '        {{- raise_exception("Only user and assistant roles are supported, with the exception'
    ' of an initial optional system message!") }}\n'
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)
# Exercises trim_blocks / lstrip_blocks, namespace, tojson, loop controls, raise_exception,
# strftime_now and transformers' {% generation %} tag.
FANCY_TEMPLATE = """{%- set ns = namespace(n=0) %}
{% for message in messages %}
    {% if message.role not in ['system', 'user', 'assistant'] %}
        {{ raise_exception('unknown role ' + message.role) }}
    {% endif %}
    {% set ns.n = ns.n + 1 %}
<|im_start|>{{ message.role }} {{ message.content | tojson }}<|im_end|>
    {% if loop.index >= 4 %}{% break %}{% endif %}
{% endfor %}
{% generation %}g{% endgeneration %}
turns={{ ns.n }} year={{ strftime_now('%Y') }} eos={{ eos_token }}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello! héllo 世界"}],
    [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": '  What is 2+2? <b>"quoted"</b>  '},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 🎉?"},
        {"role": "assistant", "content": "a party"},
    ],
]


def _byte_level(specials: Sequence[str], vocab_size: int = 300) -> Tokenizer:
    """A GPT-2 / Llama 3 / Qwen2 style byte-level BPE (multi-byte characters span tokens)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return tokenizer


def _sentencepiece_like() -> Tokenizer:
    """A Llama 2 / Mistral style tokenizer: Metaspace, byte fallback, BOS post-processor."""
    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens]
    )
    tokenizer.train_from_iterator([t.replace("é", "e") for t in CORPUS], trainer)
    # byte tokens are ordinary vocabulary (decoded, never skipped), as in Llama 2's
    spec = json.loads(tokenizer.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<0x")]
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def _save_hf(folder: Path, backend: Tokenizer, template: str | None, **special: str) -> Any:
    """Saved with transformers, reloaded with AutoTokenizer: the reference."""
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=template, **special
    )
    fast.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def _stream(tokenizer: Any, ids: Sequence[int], **kwargs: Any) -> list[str]:
    detokenizer = Detokenizer(tokenizer, **kwargs)
    pieces = [detokenizer.push(t) for t in ids]
    pieces.append(detokenizer.flush())
    return pieces


# -- ByteTokenizer ----------------------------------------------------------------------


def test_byte_tokenizer_plain_text_is_bytes() -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.encode("hé") == [104, 195, 169]
    assert tokenizer.decode(tokenizer.encode(TEXT)) == TEXT
    assert tokenizer.vocab_size == 320
    assert ByteTokenizer(add_bos=True).encode("a") == [256, 97]
    assert ByteTokenizer(add_bos=True).encode("a", add_special_tokens=False) == [97]


def test_byte_tokenizer_special_tokens() -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode("<|user|>\nhi<|end|><|reserved_3|>")
    assert ids == [259, 10, 104, 105, 261, 265]
    assert tokenizer.decode(ids) == "\nhi"
    assert tokenizer.decode(ids, skip_special_tokens=False) == "<|user|>\nhi<|end|><|reserved_3|>"
    assert tokenizer.eos_token_ids == (257, 261)
    assert tokenizer.token_id("<|assistant|>") == 260
    assert tokenizer.decode([0xE4, 0xB8]) == "\ufffd"  # an incomplete character
    with pytest.raises(ValueError, match=r"0\.\.319"):
        tokenizer.decode([320])


# -- Detokenizer ------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [True, False])
def test_detokenizer_streams_bytes_exactly(skip: bool) -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(TEXT + "<|end|>" + TEXT)
    pieces = _stream(tokenizer, ids, skip_special_tokens=skip)
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=skip)
    assert not any("\ufffd" in p for p in pieces)
    assert pieces.count("") > 10  # held back inside multi-byte characters
    assert pieces[-1] == ""


def test_detokenizer_flushes_an_incomplete_character() -> None:
    tokenizer = ByteTokenizer()
    pieces = _stream(tokenizer, [104, 0xF0, 0x9F])
    assert pieces == ["h", "", "", "\ufffd"]


def test_detokenizer_with_a_multibyte_prompt_as_context() -> None:
    tokenizer = ByteTokenizer()
    prompt, generated = tokenizer.encode("héllo 世界"), tokenizer.encode("界🎉 ok<|end|>")
    pieces = _stream(tokenizer, generated, context=prompt)
    assert "".join(pieces) == "界🎉 ok"
    assert pieces[:8] == ["", "", "界", "", "", "", "🎉", " "]


@pytest.mark.parametrize("kind", ["byte_level", "sentencepiece"])
def test_detokenizer_streams_hf_tokenizers_exactly(kind: str) -> None:
    backend = _byte_level(CHATML_SPECIALS) if kind == "byte_level" else _sentencepiece_like()
    tokenizer = HFTokenizer(backend)
    for text in (TEXT, " leading space and  double", "世界🎉🎉 x"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) > len(text.encode()) // 4
        pieces = _stream(tokenizer, ids)
        assert "".join(pieces) == tokenizer.decode(ids)
        assert not any("\ufffd" in p for p in pieces)
    assert tokenizer.decode(tokenizer.encode(TEXT, add_special_tokens=False)) == TEXT


def test_detokenizer_with_prompt_context_keeps_the_leading_space() -> None:
    tokenizer = HFTokenizer(_sentencepiece_like())
    prompt = tokenizer.encode("hello", add_special_tokens=False)
    generated = tokenizer.encode("hello world 世界", add_special_tokens=False)[1:]
    pieces = _stream(tokenizer, generated, context=prompt)
    full = tokenizer.decode(prompt + generated)
    assert "".join(pieces) == full[len(tokenizer.decode(prompt)) :]
    assert "".join(pieces).startswith(" ")


# -- HFTokenizer against transformers -------------------------------------------------


def test_hf_tokenizer_encodes_as_transformers(tmp_path: Path) -> None:
    reference = _save_hf(tmp_path, _sentencepiece_like(), None, bos_token="<s>", eos_token="</s>")
    ours = HFTokenizer(Tokenizer.from_file(str(tmp_path / "tokenizer.json")), bos_token="<s>")
    for text in (TEXT, "hello world", ""):
        assert ours.encode(text) == reference.encode(text)
        assert ours.encode(text, add_special_tokens=False) == reference.encode(
            text, add_special_tokens=False
        )
        ids = reference.encode(text)
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)
    assert ours.bos_token_id == 1


def test_add_bos_token_without_a_post_processor() -> None:
    """transformers 5 ignores add_bos_token when tokenizer.json exists; a tokenizer.json
    with no post-processor and an explicit add_bos_token gets the BOS (transformers 4)."""
    backend = _sentencepiece_like()
    backend.post_processor = None
    plain = HFTokenizer(backend, bos_token="<s>")
    with_bos = HFTokenizer(backend, bos_token="<s>", add_bos_token=True)
    assert plain.encode("hello")[0] != 1
    assert with_bos.encode("hello") == [1, *plain.encode("hello")]
    assert with_bos.encode("hello", add_special_tokens=False) == plain.encode("hello")
    post = HFTokenizer(_sentencepiece_like(), bos_token="<s>", add_bos_token=True)
    assert post.encode("hello") == with_bos.encode("hello")  # never a second BOS


# -- chat templates -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "specials", "tokens"),
    [
        (
            QWEN2_TEMPLATE,
            CHATML_SPECIALS,
            {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        ),
        (
            LLAMA3_TEMPLATE,
            LLAMA3_SPECIALS,
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        ),
        (FANCY_TEMPLATE, CHATML_SPECIALS, {"eos_token": "<|im_end|>"}),
        (TINY_TEMPLATE, [], TINY_SPECIAL_TOKENS),
    ],
    ids=["qwen2", "llama3", "fancy", "tiny"],
)
def test_chat_rendering_equals_transformers(
    tmp_path: Path, template: str, specials: list[str], tokens: dict[str, str]
) -> None:
    backend = _byte_level([*specials, *tokens.values()])
    reference = _save_hf(tmp_path, backend, template, **tokens)
    saved = (tmp_path / "chat_template.jinja").read_text()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    variables = {k: config[k] for k in tokens}
    ours = HFTokenizer(
        Tokenizer.from_file(str(tmp_path / "tokenizer.json")), bos_token=tokens.get("bos_token")
    )
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            expected = reference.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            )
            got = render_chat(
                saved, messages, add_generation_prompt=prompt, special_tokens=variables
            )
            assert got == expected
        expected_ids = reference.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=True
        )
        expected_ids = expected_ids["input_ids"] if hasattr(expected_ids, "keys") else expected_ids
        assert encode_chat(ours, saved, messages, special_tokens=variables) == list(expected_ids)


def test_a_template_that_refuses_and_a_missing_template() -> None:
    bad = [{"role": "tool", "content": "x"}]
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        render_chat(FANCY_TEMPLATE, bad)
    with pytest.raises(ChatTemplateError, match="knows the roles"):
        render_chat(TINY_TEMPLATE, bad)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat(None, CONVERSATIONS[0])
    with pytest.raises(ChatTemplateError, match="failed"):
        render_chat("{% if %}", CONVERSATIONS[0])


def test_sandbox_blocks_python_internals() -> None:
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ChatTemplateError):
        render_chat(escape, CONVERSATIONS[0])


def test_loaded_checkpoint_renders_its_template(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ckpt")
    tokens = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
    reference = _save_hf(folder, _byte_level([*LLAMA3_SPECIALS]), LLAMA3_TEMPLATE, **tokens)
    loaded = load_model(folder)
    assert loaded.chat_template == LLAMA3_TEMPLATE
    assert loaded.special_tokens == tokens
    messages = CONVERSATIONS[1]
    ids = encode_chat(
        loaded.tokenizer, loaded.chat_template, messages, special_tokens=loaded.special_tokens
    )
    expected = reference.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert ids == list(expected)
    assert ids[0] == loaded.tokenizer.bos_token_id
