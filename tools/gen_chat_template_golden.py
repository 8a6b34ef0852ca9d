#!/usr/bin/env python3
"""Renders fixed conversations with each chat template family's real template
(tests/fixtures/chat_templates/<name>.jinja) through transformers'
apply_chat_template, the oracle engine/tokenizer/chat_template.cc is tested
against (tests/chat_template_test.cc), into
tests/fixtures/chat_templates/golden.json.

A fixture's first line is a Jinja comment naming the model it comes from; the
template is the rest of the file without its final newline.

  pip install transformers jinja2   # no torch needed
  tools/gen_chat_template_golden.py
"""
import json
import pathlib

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/chat_templates"

# Fixture, family (ChatStyleName), and the model's BOS/EOS token texts.
TEMPLATES = [
    ("chatml", "chatml", "<|im_start|>", "<|im_end|>"),
    ("qwen2", "chatml", "<|endoftext|>", "<|im_end|>"),
    ("llama3", "llama3", "<|begin_of_text|>", "<|eot_id|>"),
    ("llama3_1", "llama3", "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral", "mistral", "<s>", "</s>"),
    ("gemma", "gemma", "<bos>", "<eos>"),
    ("phi3", "phi3", "<s>", "<|endoftext|>"),
]

SYSTEM = {"role": "system", "content": "You answer in one sentence."}
USER = {"role": "user", "content": "What is the capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris."}
USER2 = {"role": "user", "content": "And of Spain?"}
DOCUMENT = "Chapter 1\n\nIt was a bright cold day in April."
QUESTION = "Who is the chapter about?"

# name, messages, add_generation_prompt. The "session_*" cases are a session's
# one-turn conversation (document, blank line, question) that ChatPrompt's
# pieces must reproduce.
CASES = [
    ("user", [USER], True),
    ("system_user", [SYSTEM, USER], True),
    ("multi_turn", [SYSTEM, USER, ANSWER, USER2], True),
    ("multi_turn_no_system", [USER, ANSWER, USER2], True),
    ("closed_turns", [USER, ANSWER], False),
    ("system_user_closed", [SYSTEM, USER], False),
    ("padded_content", [{"role": "user", "content": "  spaced out \n"}], True),
    ("padded_system", [{"role": "system", "content": " Be brief.\n"}, USER], True),
    ("session_system", [SYSTEM, {"role": "user", "content": DOCUMENT + "\n\n" + QUESTION}], True),
    ("session_default", [{"role": "user", "content": DOCUMENT + "\n\n" + QUESTION}], True),
]


def load_template(name):
    text = (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    assert header.startswith("{#") and header.endswith("#}"), name
    return body[:-1] if body.endswith("\n") else body


def tokenizer_for(template, bos, eos):
    vocab = {"<unk>": 0, bos: 1, eos: 2}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token="<unk>",
        chat_template=template)


def main():
    out = {"session": {"system": SYSTEM["content"], "document": DOCUMENT, "question": QUESTION},
           "templates": []}
    for name, family, bos, eos in TEMPLATES:
        template = load_template(name)
        tok = tokenizer_for(template, bos, eos)
        cases = []
        for case, messages, gen in CASES:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            cases.append({"name": case, "messages": messages, "add_generation_prompt": gen,
                          "text": text})
        out["templates"].append({"fixture": f"{name}.jinja", "family": family, "bos": bos,
                                 "eos": eos, "cases": cases})
    path = FIXTURES / "golden.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
