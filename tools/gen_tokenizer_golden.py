#!/usr/bin/env python3
"""Golden token ids for the default model's tokenizer, from Hugging Face `tokenizers`.

What it does: reads the vocabulary of the GGUF (tokenizer.ggml.tokens, .merges,
.token_type) with the `gguf` package and builds a `tokenizers.Tokenizer` from it:
a byte-level BPE model with the vocabulary and ranked merges, the control tokens
added as special tokens, the ByteLevel decoder, and the pre-tokenizer of
SmolLM2's tokenizer.json: Sequence[Digits(individual_digits=True),
ByteLevel(add_prefix_space=False, use_regex=True)]. (transformers'
AutoTokenizer.from_pretrained(dir, gguf_file=...) would do the conversion but
needs torch, which this project does not install.) It then encodes a list of
strings (prose, code, long numbers, runs of spaces/newlines/tabs, accents, CJK,
emoji, special tokens, mixed) and a few paragraphs of the books in
shared/data/books, checks that decoding gives the text back, and writes
tests/fixtures/tokenizer/smollm_golden.json.

The same vocabulary is also encoded with the pre-tokenizers of the other
byte-level families (gpt2: ByteLevel's own regex; llama-bpe and qwen2: their
tokenizer.json Split regex then ByteLevel without regex; llama-bpe with
ignore_merges as Llama 3's tokenizer.json has it) over the short strings, so the
C++ splitters of all four pre-tokenizers are checked against `tokenizers`.

SentencePiece BPE: trains a small BPE model (600 pieces, byte fallback, split
digits, identity normalization, dummy prefix, one user-defined symbol <sep>)
with the `sentencepiece` package on the start of one book (training is
deterministic), writes its pieces, scores and GGUF token types as GGUF's
"llama" tokenizer would store them, and the ids `sentencepiece` gives for test
strings, to tests/fixtures/tokenizer/spm_golden.json.

Usage: python3 tools/gen_tokenizer_golden.py [model.gguf] [books dir]
  defaults: $LONGCTX_MODEL or ~/.cache/longctx/models/SmolLM2-135M-Instruct.Q4_1.gguf,
            ../shared/data/books relative to the repository root.
"""
import io
import json
import os
import sys
from pathlib import Path

from gguf import GGUFReader
import jinja2
import sentencepiece as spm
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/tokenizer/smollm_golden.json"
SPM_OUT = ROOT / "tests/fixtures/tokenizer/spm_golden.json"

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

STRINGS = [
    ("empty", ""),
    ("prose", "The quick brown fox jumps over the lazy dog. It wasn't me, they'll say; we'd've known."),
    ("contractions", "I'm sure you're right, but she's said he'd LL'VE 'S it's"),
    ("code", "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"),
    ("cpp", "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product\n\t\treturn sum;"),
    ("digits", "Pi is 3.14159265358979, year 2024, phone +1-555-0100, 1,000,000 and 007."),
    ("long_number", "12345678901234567890123456789012345678901234567890"),
    ("spaces", "a  b   c    d     e      end      "),
    ("leading_spaces", "   three leading spaces"),
    ("newlines", "line one\nline two\n\nline four\r\nwindows\r\n\n\n  indented\n"),
    ("tabs", "col1\tcol2\t\tcol4\n\tindented\t \t mixed"),
    ("whitespace_only", " \n\t \n  "),
    ("accents", "Café naïve résumé façade Ångström Zürich São Paulo crème brûlée"),
    ("cjk", "你好，世界！这是一个测试。日本語のテキスト。한국어 텍스트입니다."),
    ("emoji", "Emoji: 😀👍🏽🇺🇸 and ❤️ family 👨‍👩‍👧‍👦 end"),
    ("cyrillic_greek_arabic", "Россия и Україна — Ελληνικά — مرحبا بالعالم"),
    ("punctuation", "Wait... what?! (yes) [no] {maybe} <tag/> @user #hash $5 %50 ^_^ ~~ `x` \"q\""),
    ("special_tokens", "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"),
    ("special_adjacent", "x<|endoftext|>y<|im_end|><|im_start|> <repo_name>z<file_sep>"),
    ("special_partial", "<|im_start <|im_end| <|endoftext|"),
    ("mixed", "Résumé: 3× faster (≈42%) — see https://example.com/a?b=1&c=2 ✔️ 東京 2024年\n\tdone"),
    ("nbsp_and_friends", "a\u00a0b\u2009c\u3000d\u200be\u2028f"),
    ("math", "∑_{i=1}^{n} x_i² ≤ ∞, ∀ε>0 ∃δ: |x−y|<δ ⇒ |f(x)−f(y)|<ε"),
    # Bytes SmolLM2 has no token for (0x04, 0x06, 0x13): dropped, neighbours merge.
    ("missing_bytes", "a\x04b !\x06! x\x13y"),
    ("markdown", "# Title\n\n- item **bold** _it_\n- `code`\n\n```python\nprint('hi')\n```\n"),
]

PRE_TOKENIZERS = {
    "smollm": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
    "gpt2": lambda: pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    "llama-bpe": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
    "qwen2": lambda: pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]),
}


def field_strings(reader, key):
    f = reader.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def field_ints(reader, key):
    f = reader.fields[key]
    return [int(f.parts[i][0]) for i in f.data]


def build(tokens, merges, types, pre):
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    model = models.BPE(vocab=vocab, merges=pairs, ignore_merges=(pre == "llama-bpe"))
    tok = Tokenizer(model)
    tok.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types) if ty == 3]  # GGUF control tokens
    tok.add_special_tokens(specials)
    return tok


CHATS = [
    ("chat_default_system", [{"role": "user", "content": "What is the capital of France?"}], True),
    ("chat_with_system", [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. 你好 😀"},
        {"role": "user", "content": "Count: 1 2 3\n\tdone"}], False),
]


def chat_cases(reader, tok):
    """Prompts rendered from the GGUF's own Jinja chat template, and their ids."""
    f = reader.fields["tokenizer.chat_template"]
    template = jinja2.Environment().from_string(bytes(f.parts[f.data[0]]).decode("utf-8"))
    out = []
    for name, messages, gen in CHATS:
        text = template.render(messages=messages, add_generation_prompt=gen)
        out.append({"pre": "smollm", "name": name, "text": text, "messages": messages,
                    "add_generation_prompt": gen,
                    "ids": tok.encode(text, add_special_tokens=False).ids})
    return out


def book_paragraphs(books_dir):
    """Three paragraphs from each book, picked at fixed positions."""
    out = []
    for path in sorted(Path(books_dir).glob("*.txt")):
        paras = [p for p in path.read_text(encoding="utf-8").split("\n\n") if len(p) > 300]
        for k in (5, len(paras) // 2, len(paras) - 10):
            text = paras[k][:800]
            out.append((f"{path.stem}_{k}", text))
    return out


SPM_STRINGS = [
    ("prose", "The quick brown fox jumps over the lazy dog."),
    ("book", "Raskolnikov went out into the street, and the heat was terrible."),
    ("spaces", "  two leading, three   inside and trailing  "),
    ("newlines_tabs", "line one\nline two\n\n\tindented\r\n"),
    ("digits", "In 1866 he paid 15 roubles and 30 kopecks."),
    ("accents_cjk_emoji", "naïve café 你好 😀 Ångström"),
    ("user_defined", "left<sep>right and a <sep> b"),
    ("control_text", "<s> and </s> stay text"),
    ("apostrophes", "it's don't ’quoted’"),
]


def spm_fixture(books):
    text = (Path(books) / "crime_and_punishment.txt").read_text(encoding="utf-8")[:300000]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text.split("\n")), model_writer=buf, model_type="bpe",
        vocab_size=600, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True,
        num_threads=1, user_defined_symbols=["<sep>"], character_coverage=0.995, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        piece = sp.id_to_piece(i)
        pieces.append(piece)
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        elif piece == "<sep>":
            types.append(4)
        else:
            types.append(1)
    cases = []
    for name, s in SPM_STRINGS:
        ids = sp.encode(s)
        assert sp.decode(ids) == s, (name, sp.decode(ids), s)
        cases.append({"name": name, "text": s, "ids": ids})
    return {
        "generator": "tools/gen_tokenizer_golden.py (sentencepiece %s)" % spm.__version__,
        "tokens": pieces, "scores": scores, "types": types,
        "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id(),
        "cases": cases,
    }


def main():
    model = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get(
        "LONGCTX_MODEL", Path.home() / ".cache/longctx/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    books = Path(sys.argv[2] if len(sys.argv) > 2 else ROOT.parent / "shared/data/books")
    reader = GGUFReader(str(model))
    tokens = field_strings(reader, "tokenizer.ggml.tokens")
    merges = field_strings(reader, "tokenizer.ggml.merges")
    types = field_ints(reader, "tokenizer.ggml.token_type")

    cases = []
    for pre in PRE_TOKENIZERS:
        tok = build(tokens, merges, types, pre)
        inputs = STRINGS + (book_paragraphs(books) if pre == "smollm" else [])
        for name, text in inputs:
            ids = tok.encode(text, add_special_tokens=False).ids
            back = tok.decode(ids, skip_special_tokens=False)
            case = {"pre": pre, "name": name, "text": text, "ids": ids}
            if name == "missing_bytes":
                assert back != text
                case["lossy"] = True
            else:
                assert back == text, (pre, name, back, text)
            cases.append(case)
        if pre == "smollm":
            cases += chat_cases(reader, tok)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": model.name,
        "generator": "tools/gen_tokenizer_golden.py (tokenizers %s)" % __import__("tokenizers").__version__,
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, ensure_ascii=True, indent=None, separators=(",", ":")) + "\n")
    print(f"wrote {OUT}: {len(cases)} cases, {OUT.stat().st_size} bytes")
    SPM_OUT.write_text(json.dumps(spm_fixture(books), ensure_ascii=True, separators=(",", ":")) + "\n")
    print(f"wrote {SPM_OUT}: {SPM_OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
