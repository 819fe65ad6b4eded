"""Record A1111 v1.10.1's own prompt handling for a prompt corpus: the golden tables of
``tests/engine/test_prompt_parity.py``.

Runs with A1111's venv against A1111's modules (no server, no downloaded weights); nothing of A1111 is
copied. The tiny demo models come from this project's venv first:

    .venv/bin/python -m diffusers_server make-demo-models /tmp/demo-models --sdxl
    ~/.cache/a1111-reference/venv/bin/python scripts/record_prompt_tables.py \
        --webui ~/.cache/a1111-reference/webui --hf-home ~/.cache/a1111-reference/hf_home \
        --demo-models /tmp/demo-models

(~1 min; re-recording gives byte-identical files.) Rerun it whenever ``demo_models.py`` changes the demo
text encoders or the corpus changes.

For every corpus case it records, from A1111's functions: the comment stripping
(``processing_scripts.comments``), the extra-network parse (``extra_networks.parse_prompt``) and what the
Lora extension's ``activate`` makes of the tags (names + multipliers, or the exception it raises), the
``AND`` split with weights (``prompt_parser.get_multicond_prompt_list``), the prompt-editing schedules
(``get_learned_conditioning_prompt_schedules``, several step counts, hires, old scheduling), and, for the
texts of each schedule, the token ids, multipliers and embedding positions that A1111's text-encoder
wrappers (``sd_hijack_clip``, ``sd_hijack_open_clip``) feed the SD1.5 encoder and both SDXL encoders,
plus SDXL's zeroed empty negative prompt. The transformers CLIP tokenizer comes from ``HF_HOME``
(built offline by the team's ``build_hf_cache.py``).

With ``--demo-models DIR`` (written by ``python -m diffusers_server make-demo-models DIR``) it also records
the conditioning tensors A1111's own code computes with the tiny SD1.5 demo model's text encoder and embedding
(``prompt_parser.get_multicond_learned_conditioning`` through A1111's hijacked CLIP wrapper) into
``a1111_conds_sd15_tiny.json``: ``tests/engine/test_conditioning_parity.py`` compares ``build_conds`` with it.
"""

# ruff: noqa: RUF001  (the corpus is made of look-alike characters on purpose)
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
from pathlib import Path

log = logging.getLogger("record_prompt_tables")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "tests" / "fixtures" / "prompts" / "a1111_prompt_tables.json"
CONDS_OUT = DEFAULT_OUT.with_name("a1111_conds_sd15_tiny.json")
SDXL_CONDS_OUT = DEFAULT_OUT.with_name("a1111_conds_sdxl_tiny.json")
#: (kind, prompt, steps, options) whose conditioning is recorded with the tiny SD1.5 demo model.
COND_CASES: list[tuple[str, str, int, dict[str, object]]] = [
    ("positive", "a photo of a cat", 4, {}),
    ("positive", "a (photo:1.3) of a [cat], ((best quality))", 4, {}),
    ("positive", "(a:1.2) [cat:dog:0.5] photo", 10, {}),
    ("positive", "[(red:1.3)|blue] ball", 4, {}),
    ("positive", "a cat:1.5 AND a (dog:1.2):0.5", 4, {}),
    ("positive", ", ".join(["a (cat:1.1) on a mat"] * 20), 4, {}),
    ("positive", "a demo-embedding-tiny photo, (demo-embedding-tiny:1.2)", 4, {}),
    ("positive", "a BREAK (b:1.4)", 4, {}),
    ("positive", "a (photo:1.3) of a cat", 4, {"CLIP_stop_at_last_layers": 2}),
    ("positive", "a (photo:1.3) of a cat", 4, {"emphasis": "No norm"}),
    ("negative", "<lora:demo-lora-tiny:1> blurry, [ugly:bad:2]", 4, {}),
    ("negative", "", 4, {}),
]
#: The same for the tiny SDXL demo model (both encoders, pooled vector, zeroed empty negative).
SDXL_COND_CASES: list[tuple[str, str, int, dict[str, object]]] = [
    ("positive", "a photo of a cat", 4, {}),
    ("positive", "a (photo:1.3) of a [cat], ((best quality))", 4, {}),
    ("positive", "[(red:1.3)|blue] ball", 4, {}),
    ("positive", "salt &amp; pepper\uff0c \u201cquoted\u201d, <lora-like text", 4, {}),
    ("positive", ", ".join(["a (cat:1.1) on a mat"] * 20), 4, {}),
    ("positive", "a (photo:1.3) of a cat", 4, {"CLIP_stop_at_last_layers": 3, "sdxl_clip_l_skip": True}),
    ("negative", "", 4, {}),
    ("negative", " ", 4, {}),
    ("negative", "<lora:x:1> blurry <end_of_text> after", 4, {}),
]

#: name → vector count of the textual-inversion embeddings registered for the corpus.
EMBEDDINGS = {"emb-style": 3, "easynegative": 8, "bigemb": 40}
#: (steps, hires_steps) pairs whose schedules are recorded; token tables use the first one.
STEP_PAIRS = [(20, None), (7, None), (40, None), (20, 10), (8, 30)]


def _words(count: int, word: str = "cat") -> str:
    return " ".join([word] * count)


def corpus() -> list[dict[str, object]]:
    """The prompts: A1111's prompt syntax by category, the issue's failing cases, chunk edges."""
    positive = [
        # plain text, case, punctuation, numbers
        "",
        " ",
        "a photo of a cat",
        "A Cute CAT, (masterpiece:1.2), best quality!!",
        "1girl, solo, 8k uhd, 35mm, f/1.8, 4:3",
        "lots   of   spaces\tand\nnewlines  ",
        "it's a dog's life, they'll've, I'M",
        # emphasis and escapes
        "(masterpiece)",
        "((best quality)), (((ultra detailed)))",
        "(a:1.5) [b] [[c]] (d:0.5)",
        "an (important) word",
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        "(unbalanced",
        "unbalanced) ] text",
        "(a (b:1.3) c)",
        "(unnecessary)(parens)",
        "(a:-1) (b:0) (c:+1.5) (d:.5) (e:1.)",
        "( spaced : 1.25 )",
        "(word:1.2.3)",
        "(a:b:1.2)",
        r"\(literal\] \[x\) a \\ b",
        "trailing backslash \\",
        "[a] [b:]",
        "(red:1.1) (red:1.1) blue",
        # BREAK
        "a BREAK b",
        "BREAK",
        "BREAK a BREAK",
        "a BREAKb aBREAK b break c",
        "(a BREAK b:1.2)",
        "a BREAK BREAK b",
        "a\nBREAK\nb",
        _words(80) + " BREAK dog",
        # chunking and comma backtracking
        _words(74),
        _words(75),
        _words(76),
        _words(150),
        _words(151),
        _words(300, "blue"),
        ", ".join([_words(4)] * 20),
        _words(70) + ", " + _words(10, "dog"),
        _words(50) + ", " + _words(30, "dog"),
        _words(54) + ", " + _words(30, "dog"),
        _words(55) + ", " + _words(30, "dog"),
        _words(74) + ", " + _words(5, "dog"),
        _words(75) + ", dog",
        ",".join(["cat"] * 80),
        _words(70) + "，" + _words(10, "dog"),
        "(" + _words(70) + ":1.3), " + _words(10, "dog"),
        # comments
        "a cat # a comment\nb dog",
        "# a full-line comment\nx",
        "a#b",
        "#only",
        "(a # inside\n:1.2)",
        "x\n#c1\n#c2\ny",
        # embeddings, also at chunk edges
        "emb-style",
        "a emb-style b, easynegative",
        "emb-styles emb style",
        "(emb-style:1.3) [easynegative]",
        _words(73) + " emb-style",
        _words(74) + " emb-style",
        _words(72) + " emb-style",
        _words(40) + " bigemb",
        _words(30) + " bigemb bigemb",
        "EMB-STYLE and Emb-Style",
        # tokenizer edge cases: full-width, curly quotes, ligatures, HTML entities, unicode
        "a cat，a dog。（red：1.2）",
        "ＡＢＣ ｆｕｌｌ－ｗｉｄｔｈ １２３",
        "“curly” ‘quotes’ don’t",
        "ﬁne ﬂower ﬀ ﬃ",
        "salt &amp; pepper &lt;b&gt; &amp;amp; &quot;q&quot; &#39;x&#39; &nbsp;",
        "a < b &amp; c",
        "Ünïcödé ❤ 日本語 🐱🐶 İstanbul straße",
        "mojibake: Ã©tÃ© Ã¼ber",
        "e\u0301 cafe\u0301 zero\u200bwidth soft\u00adhyphen",
        "dash — ellipsis … tilde ～ bullet •",
        "<|endoftext|>",
        "a <|startoftext|> b <|endoftext|> c",
        "<|ENDOFTEXT|> x",
        "<start_of_text> y <end_of_text> z",
        "tab\tx\u3000ideographic space",
        # extra networks
        "<lora:foo:0.8> a cat",
        "a cat <lora:foo:abc>",
        "<lora:foo:0.8> <lora:bar:abc> x",
        "<lora:foo:0.5:0.2>",
        "<lora:foo:te=0.3:unet=0.7>",
        "<lora:foo: te=0.3>",
        "<lora:foo:1:1:8>",
        "<lora:foo:1:1:abc>",
        "<lora:foo:1:dyn=4>",
        "<lora:foo>",
        "<lora:foo:a=b=c>",
        "<lora:foo:1e-1> <lora:bar:-0.5>",
        "<lora:foo:inf>",
        "<lora: spaced name :1>",
        "<lyco:bar:0.4>",
        "<hypernet:h:1> x",
        "<lora:te=1>",
        "x<lora:foo:1>AND y",
        "<lora:foo:0.8>, (masterpiece:1.2)",
        # a trailing ":number" (weight of the whole prompt)
        "a cat:1.5",
        "16:9, 12:30",
        "ratio 4:3",
        "a: 1.5 ",
        "a :-0.5",
        "a:1.",
        "a:.5",
        "a:1e2",
        "a:b",
        "(a:1.5)",
        ":2",
        # AND
        "a AND b",
        "a AND b:0.5",
        "a cat:1.2 AND a dog:0.8",
        "(a)AND(b)",
        "AND a",
        "a AND",
        "AND",
        "a ANDb aAND b a and b",
        "a AND b AND c:-1",
        "cat AND cat",
        "a\nAND\nb",
        "a_AND_b",
        "a-AND-b",
        "a AND AND b",
        # prompt editing
        "a [b:c:5] d",
        "[a:b:0.5]",
        "[a:b:10]",
        "[a:5]",
        "[a::5]",
        "[:a:5]",
        "[a: 3]",
        "[a:b: 0.25 ]",
        "[a:b:1.0]",
        "[a:b:1]",
        "[a:b:0]",
        "[a:b:-1]",
        "[a:b:25]",
        "[a:b:0.999]",
        "[a:b:1e1]",
        "[a:b:+3]",
        "fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
        "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]",
        "a [[[b]]:2]",
        "[(a:2):3]",
        "a [b : c : 1] d",
        "a[b:[c:d:2]:1]e",
        "[(a:1.2):[b:c:3]:0.5]",
        "[a [b:c:2]:d:0.5]",
        "[a:b:c:1]",
        "[a:b]",
        "[a:b:c]",
        "(a [b:c:0.5]:1.2)",
        "[a:(b:1.5):0.3] BREAK c",
        "[" + _words(80) + ":dog:0.5]",
        "[a:b:3] AND [c:d:0.5]:0.7",
        "[a AND b:c:5]",
        # alternation
        "[a|b]",
        "[a|b|c] d",
        "[fe|]male",
        "[fe|||]male",
        "[a|(b:1.1)]",
        "[a|[b|c]]",
        "[[a|b]:c:5]",
        "[a|b] [c|d|e]",
        "[|]",
        "[a|b:c:3]",
        "[a|b:3]",
        # malformed: A1111 falls back to the plain text
        "a [unbalanced",
        "((a][:b:c [d:3]",
        "a [{b|d{:.5] c",
        "[a:b:c",
        "]",
        "[[",
        ":",
        "a ) b ( c",
        "[a:b:5]]",
        "a \\[b:c:5\\] d",
        "a [b\\:c:5] d",
    ]
    negative = [
        "",
        " ",
        "worst quality, low quality",
        "<lora:foo:0.8> blurry",
        "<lora:foo:1> &amp; bad hands",
        "easynegative, (bad hands:1.3)",
        "[ugly:blurry:10]",
        "[a|b] text",
        "a AND b:0.5",
        "a cat:1.5",
        "[:5]",
        "[::5]",
        _words(100, "ugly"),
        "# comment only",
        "bad # comment\nworse",
    ]
    cases: list[dict[str, object]] = [{"kind": "positive", "text": t, "options": {}} for t in positive]
    cases += [{"kind": "negative", "text": t, "options": {}} for t in negative]
    variants = [
        ({"emphasis": "None"}, ["(a:1.5) [b] BREAK c", "[a:b:5] (c)", "a \\(b\\)", "a AND b:0.5"]),
        ({"emphasis": "Ignore"}, ["(a:1.5) [b] BREAK c"]),
        ({"emphasis": "No norm"}, ["(a:1.5) [b] BREAK c"]),
        ({"comma_padding_backtrack": 0}, [_words(70) + ", " + _words(10, "dog")]),
        ({"comma_padding_backtrack": 5}, [_words(70) + ", " + _words(10, "dog"), _words(73) + ", dog dog"]),
        ({"enable_prompt_comments": False}, ["a cat # not a comment\nb"]),
    ]
    for options, texts in variants:
        cases += [{"kind": "positive", "text": t, "options": options} for t in texts]
    return cases


def setup_a1111(webui: Path, hf_home: Path) -> types.SimpleNamespace:
    """Import A1111's modules the way its launcher does (no model, no server)."""
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    data_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "record-prompt-tables-data"
    sys.argv = [
        sys.argv[0],
        "--skip-torch-cuda-test",
        "--use-cpu",
        "all",
        "--no-half",
        "--data-dir",
        str(data_dir),
    ]
    os.chdir(webui)
    sys.path[:0] = [str(webui), str(webui / "extensions-builtin" / "Lora")]
    from modules import initialize

    initialize.imports()
    import extra_networks_lora
    import networks
    from modules import (
        extra_networks,
        prompt_parser,
        sd_hijack_clip,
        sd_hijack_open_clip,
        sd_models_xl,
        shared,
    )
    from modules.processing_scripts import comments
    from modules.textual_inversion.textual_inversion import Embedding, EmbeddingDatabase
    from transformers import CLIPTokenizer

    return types.SimpleNamespace(
        extra_networks_lora=extra_networks_lora,
        networks=networks,
        extra_networks=extra_networks,
        prompt_parser=prompt_parser,
        sd_hijack_clip=sd_hijack_clip,
        sd_hijack_open_clip=sd_hijack_open_clip,
        sd_models_xl=sd_models_xl,
        shared=shared,
        comments=comments,
        Embedding=Embedding,
        EmbeddingDatabase=EmbeddingDatabase,
        CLIPTokenizer=CLIPTokenizer,
    )


def run_lengths(row: list[float]) -> list[list[float]]:
    """``[v, v, v, w]`` → ``[[v, 3], [w, 1]]``: chunks are mostly padding, this keeps the tables small."""
    runs: list[list[float]] = []
    for value in row:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return runs


def _capturing(wrapper: object, width: int) -> list[dict[str, object]]:
    """Make ``wrapper``'s forward() record what reaches the transformer instead of running one."""
    import torch

    seen: list[dict[str, object]] = []
    process_tokens = wrapper.process_tokens

    def capture_process(tokens: list[list[int]], multipliers: list[list[float]]) -> torch.Tensor:
        fixes = [[[fix.offset, fix.embedding.name] for fix in f] for f in wrapper.hijack.fixes]
        seen.append({"multipliers": [run_lengths(list(map(float, m))) for m in multipliers], "fixes": fixes})
        return process_tokens(tokens, multipliers)

    def capture_encode(tokens: torch.Tensor) -> torch.Tensor:
        seen[-1]["tokens"] = [run_lengths(row) for row in tokens.tolist()]
        return torch.ones(tokens.shape[0], tokens.shape[1], width)

    wrapper.process_tokens = capture_process
    wrapper.encode_with_transformers = capture_encode
    return seen


class Recorder:
    def __init__(self, a: types.SimpleNamespace):
        self.a = a
        tokenizer = a.CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")
        self.hijack = types.SimpleNamespace(
            embedding_db=a.EmbeddingDatabase(), fixes=None, extra_generation_params={}
        )
        wrapped = types.SimpleNamespace(tokenizer=tokenizer, layer="hidden", layer_idx=-2)
        self.encoders = {
            "sd15": [a.sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords(wrapped, self.hijack)],
            "sdxl": [
                a.sd_hijack_clip.FrozenCLIPEmbedderForSDXLWithCustomWords(wrapped, self.hijack),
                a.sd_hijack_open_clip.FrozenOpenCLIPEmbedder2WithCustomWords(
                    types.SimpleNamespace(), self.hijack
                ),
            ],
        }
        # A1111 computes embedding ids with the first tokenizer (CLIP-L) for SD1.5 and SDXL alike.
        model = types.SimpleNamespace(cond_stage_model=self.encoders["sd15"][0])
        for name, vectors in EMBEDDINGS.items():
            embedding = a.Embedding(None, name)
            embedding.vectors = vectors
            self.hijack.embedding_db.register_embedding(embedding, model)

    def encode(self, texts: list[str], negative: bool) -> dict[str, object]:
        """Tokens/multipliers/fixes per chunk for each encoder, as the encoders receive them."""
        out: dict[str, object] = {}
        for kind, wrappers in self.encoders.items():
            per_encoder = []
            for wrapper in wrappers:
                seen = _capturing(wrapper, 8)
                try:
                    wrapper(list(texts))
                except ValueError as exc:  # A1111 answers HTTP 500 for these prompts
                    return {"error": f"{type(exc).__name__}: {exc}"}
                finally:
                    del wrapper.process_tokens, wrapper.encode_with_transformers
                per_encoder.append(seen)
            out[kind] = per_encoder
        out["sdxl_zero"] = self._sdxl_zeroed(texts, negative)
        return out

    def _sdxl_zeroed(self, texts: list[str], negative: bool) -> bool:
        """Ask A1111's SDXL get_learned_conditioning whether it zeroes the text conditioning."""
        seen: dict[str, object] = {}

        def conditioner(_conds: object, force_zero_embeddings: list[str]) -> None:
            seen["zero"] = "txt" in force_zero_embeddings

        conditioner.embedders = []  # type: ignore[attr-defined]
        batch = self.a.prompt_parser.SdConditioning(
            list(texts), is_negative_prompt=negative, width=64, height=64
        )
        self.a.sd_models_xl.get_learned_conditioning(types.SimpleNamespace(conditioner=conditioner), batch)
        return bool(seen["zero"])

    def loras(self, networks: dict[str, list[object]]) -> dict[str, object]:
        """What the Lora extension's activate() passes on to load_networks(), or the exception it raises."""
        params = list(networks.get("lora", [])) + list(networks.get("lyco", []))
        if not params:
            return {"activated": []}
        captured: dict[str, object] = {}

        def load_networks(
            names: list[str], te: list[float], unet: list[float], dyn: list[int | None]
        ) -> None:
            captured["activated"] = [list(x) for x in zip(names, te, unet, dyn, strict=True)]

        # The Lora extension's own settings (registered by its UI script, which is not loaded here).
        self.a.shared.opts.data.update(sd_lora="None", lora_add_hashes_to_infotext=True)
        original = self.a.networks.load_networks
        self.a.networks.load_networks = load_networks
        p = types.SimpleNamespace(all_prompts=[""], extra_generation_params={}, is_hr_pass=False)
        try:
            self.a.extra_networks_lora.ExtraNetworkLora().activate(p, params)
        except Exception as exc:  # A1111's extra_networks.activate logs it and generates without LoRAs
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            self.a.networks.load_networks = original
        return captured

    def case(self, case: dict[str, object]) -> dict[str, object]:
        a, opts = self.a, self.a.shared.opts
        defaults = {"emphasis": "Original", "comma_padding_backtrack": 20, "enable_prompt_comments": True}
        for key, value in {**defaults, **case["options"]}.items():
            opts.set(key, value)
        text = str(case["text"])
        result: dict[str, object] = dict(case)
        if opts.enable_prompt_comments:
            text = a.comments.strip_comments(text)
        result["after_comments"] = text
        if case["kind"] == "positive":
            text, networks = a.extra_networks.parse_prompt(text)
            result["after_networks"] = text
            result["networks"] = {k: [p.items for p in v] for k, v in networks.items()}
            result["loras"] = self.loras(networks)
            indexes, flat, _ = a.prompt_parser.get_multicond_prompt_list([text])
            result["parts"] = [[flat[i], weight] for i, weight in indexes[0]]
        else:
            result["parts"] = [[text, 1.0]]
        result["schedules"] = []
        for steps, hires in STEP_PAIRS:
            for old in (False, True):
                schedules = [
                    a.prompt_parser.get_learned_conditioning_prompt_schedules([part], steps, hires, old)[0]
                    for part, _ in result["parts"]
                ]
                result["schedules"].append(
                    {"steps": steps, "hires_steps": hires, "old": old, "parts": schedules}
                )
        first = result["schedules"][0]["parts"]
        result["encoded"] = [self.encode([t for _, t in s], case["kind"] == "negative") for s in first]
        return result


def _b64(tensor: object) -> str:
    import base64

    import torch

    assert isinstance(tensor, torch.Tensor)
    return base64.b64encode(tensor.detach().to(torch.float32).contiguous().numpy().tobytes()).decode()


def record_conds(a: types.SimpleNamespace, models: Path) -> dict[str, object]:
    """A1111's conditioning for COND_CASES with the tiny SD1.5 demo model's text encoder and embedding."""
    import torch
    from modules import sd_hijack
    from safetensors import safe_open
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    checkpoint = models / "checkpoints" / "demo-sd15-tiny.safetensors"
    with safe_open(str(checkpoint), framework="pt") as handle:
        config = json.loads(handle.metadata()["diffusers_server.configs"])["text_encoder"]
    prefix = "cond_stage_model.transformer."
    weights = {k[len(prefix) :]: v for k, v in load_file(str(checkpoint)).items() if k.startswith(prefix)}
    transformer = CLIPTextModel(CLIPTextConfig(**config)).eval()
    missing, unexpected = transformer.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    hijack = sd_hijack.model_hijack
    embeddings = transformer.text_model.embeddings
    embeddings.token_embedding = sd_hijack.EmbeddingsWithFixes(embeddings.token_embedding, hijack)
    tokenizer = a.CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")
    wrapped = types.SimpleNamespace(tokenizer=tokenizer, transformer=transformer)
    wrapper = a.sd_hijack_clip.FrozenCLIPEmbedderWithCustomWords(wrapped, hijack)
    name = "demo-embedding-tiny"
    data = load_file(str(models / "embeddings" / f"{name}.safetensors"))
    embedding = a.Embedding(data["emb_params"].float(), name)
    embedding.vectors = int(data["emb_params"].shape[0])
    hijack.embedding_db.register_embedding(embedding, types.SimpleNamespace(cond_stage_model=wrapper))
    model = types.SimpleNamespace(get_learned_conditioning=wrapper)
    recorded = []
    for kind, prompt, steps, options in COND_CASES:
        settings = {"emphasis": "Original", "CLIP_stop_at_last_layers": 1, "comma_padding_backtrack": 20}
        for key, value in {**settings, **options}.items():
            a.shared.opts.set(key, value)
        with torch.no_grad():
            if kind == "positive":
                batch = a.prompt_parser.get_multicond_learned_conditioning(model, [prompt], steps).batch[0]
                parts = [(part.weight, part.schedules) for part in batch]
            else:
                texts = a.prompt_parser.SdConditioning([prompt], is_negative_prompt=True)
                parts = [(1.0, a.prompt_parser.get_learned_conditioning(model, texts, steps)[0])]
        recorded.append(
            {
                "kind": kind,
                "prompt": prompt,
                "steps": steps,
                "options": options,
                "parts": [
                    {
                        "weight": weight,
                        "schedule": [[s.end_at_step, list(s.cond.shape), _b64(s.cond)] for s in schedule],
                    }
                    for weight, schedule in parts
                ],
            }
        )
    return {
        "recorded_with": "AUTOMATIC1111 v1.10.1 (scripts/record_prompt_tables.py --demo-models)",
        "cases": recorded,
    }


def _tiny_open_clip(a: types.SimpleNamespace, config: dict[str, object], name: str) -> None:
    """Register the demo model's second text encoder as an open_clip architecture (no weights)."""
    import open_clip

    width = int(config["hidden_size"])  # type: ignore[call-overload]
    assert config["intermediate_size"] == 4 * width, "open_clip 2.20's text MLP is 4x its width"
    open_clip.factory._MODEL_CONFIGS[name] = {
        "embed_dim": int(config["projection_dim"]),  # type: ignore[call-overload]
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": int(config["vocab_size"]),  # type: ignore[call-overload]
            "width": width,
            "heads": int(config["num_attention_heads"]),  # type: ignore[call-overload]
            "layers": int(config["num_hidden_layers"]),  # type: ignore[call-overload]
        },
    }


def record_sdxl_conds(a: types.SimpleNamespace, models: Path) -> dict[str, object]:
    """A1111's SDXL conditioning (its two hijacked wrappers, sgm's embedders) on the tiny SDXL demo model."""
    import torch
    from modules import sd_hijack
    from safetensors import safe_open
    from safetensors.torch import load_file
    from sgm.modules.encoders.modules import FrozenOpenCLIPEmbedder2
    from transformers import CLIPTextConfig, CLIPTextModel

    checkpoint = models / "checkpoints" / "demo-sdxl-tiny.safetensors"
    with safe_open(str(checkpoint), framework="pt") as handle:
        configs = json.loads(handle.metadata()["diffusers_server.configs"])
    tensors = load_file(str(checkpoint))
    hijack = sd_hijack.model_hijack
    clip_l = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).eval()
    prefix = "conditioner.embedders.0.transformer."
    missing, unexpected = clip_l.load_state_dict(
        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=False
    )
    assert not unexpected and all(k.endswith("position_ids") for k in missing), (missing, unexpected)
    clip_l.text_model.embeddings.token_embedding = sd_hijack.EmbeddingsWithFixes(
        clip_l.text_model.embeddings.token_embedding, hijack
    )
    tokenizer = a.CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")
    wrapped_l = types.SimpleNamespace(tokenizer=tokenizer, transformer=clip_l, layer="hidden", layer_idx=-2)
    encoder_l = a.sd_hijack_clip.FrozenCLIPEmbedderForSDXLWithCustomWords(wrapped_l, hijack)
    _tiny_open_clip(a, configs["text_encoder_2"], "demo-tiny-g")
    clip_g = FrozenOpenCLIPEmbedder2(
        arch="demo-tiny-g",
        version=None,
        device="cpu",
        layer="penultimate",
        always_return_pooled=True,
        legacy=False,
    )
    prefix = "conditioner.embedders.1.model."
    missing, unexpected = clip_g.model.load_state_dict(
        {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=False
    )
    assert not unexpected and set(missing) <= {"logit_scale"}, (missing, unexpected)
    clip_g.model.token_embedding = sd_hijack.EmbeddingsWithFixes(
        clip_g.model.token_embedding, hijack, textual_inversion_key="clip_g"
    )
    encoder_g = a.sd_hijack_open_clip.FrozenOpenCLIPEmbedder2WithCustomWords(clip_g, hijack)
    recorded = []
    for kind, prompt, steps, options in SDXL_COND_CASES:
        settings = {"emphasis": "Original", "CLIP_stop_at_last_layers": 1, "sdxl_clip_l_skip": False}
        for key, value in {**settings, **options}.items():
            a.shared.opts.set(key, value)
        schedule = a.prompt_parser.get_learned_conditioning_prompt_schedules([prompt], steps)[0]
        texts = [text for _, text in schedule]
        # sgm's GeneralConditioner: the encoders' outputs side by side; zeroed where A1111 asks for it.
        zero = Recorder._sdxl_zeroed(types.SimpleNamespace(a=a), texts, kind == "negative")
        with torch.no_grad():
            context_l = encoder_l(texts)
            context_g, pooled = encoder_g(texts)
        context = torch.cat([context_l, context_g], dim=2)
        if zero:
            context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
        recorded.append(
            {
                "kind": kind,
                "prompt": prompt,
                "steps": steps,
                "options": options,
                "schedule": [
                    [end, list(context[i].shape), _b64(context[i]), _b64(pooled[i])]
                    for i, (end, _) in enumerate(schedule)
                ],
            }
        )
    source = "AUTOMATIC1111 v1.10.1 (scripts/record_prompt_tables.py --demo-models)"
    return {"recorded_with": source, "cases": recorded}


HASH_SEEDS = range(8)
_SCHEDULES_SCRIPT = """
import json, sys
from modules import prompt_parser
queries = json.load(open(sys.argv[1]))
out = [prompt_parser.get_learned_conditioning_prompt_schedules([t], s, h, o)[0] for t, s, h, o in queries]
json.dump(out, open(sys.argv[2], "w"))
"""


def schedule_alternatives(cases: list[dict[str, object]], webui: Path) -> None:
    """Lark 1.1.2's Earley parser resolves some ambiguous prompts (``[a:b:5]]``) differently from one
    process to the next (it depends on ``PYTHONHASHSEED``): recompute every schedule under several hash
    seeds and record, where they differ, every result A1111 can give (``alternatives``)."""
    import subprocess
    import tempfile

    queries = [
        [part, entry["steps"], entry["hires_steps"], entry["old"]]
        for case in cases
        for entry in case["schedules"]
        for part, _ in case["parts"]
    ]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        query_file = Path(tmp) / "queries.json"
        query_file.write_text(json.dumps(queries))
        for seed in HASH_SEEDS:
            out_file = Path(tmp) / f"out-{seed}.json"
            env = {**os.environ, "PYTHONHASHSEED": str(seed)}
            subprocess.run(
                [sys.executable, "-c", _SCHEDULES_SCRIPT, str(query_file), str(out_file)],
                cwd=webui,
                env=env,
                check=True,
                timeout=600,
            )
            results.append(json.loads(out_file.read_text()))
    index = 0
    for case in cases:
        for entry in case["schedules"]:
            per_part = []
            for n, _ in enumerate(case["parts"]):
                seen = [entry["parts"][n]]
                for result in results:
                    if result[index] not in seen:
                        seen.append(result[index])
                per_part.append(seen)
                index += 1
            if any(len(seen) > 1 for seen in per_part):
                entry["alternatives"] = per_part


def main() -> None:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # lark's answer for a few ambiguous prompts depends on the hash seed (see schedule_alternatives):
        # fix it, so that re-recording gives the same file.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--webui", type=Path, required=True, help="A1111 v1.10.1's folder (with modules/)")
    parser.add_argument(
        "--hf-home", type=Path, required=True, help="HF_HOME with openai/clip-vit-large-patch14"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--demo-models", type=Path, help="also record conditioning with these demo models")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out.resolve()
    demo_models = args.demo_models.resolve() if args.demo_models else None
    a = setup_a1111(args.webui.resolve(), args.hf_home.resolve())
    recorder = Recorder(a)
    cases = [recorder.case(c) for c in corpus()]
    schedule_alternatives(cases, args.webui.resolve())
    meta = {
        "recorded_with": "AUTOMATIC1111 stable-diffusion-webui v1.10.1 (scripts/record_prompt_tables.py)",
        "embeddings": EMBEDDINGS,
        "ftfy": __import__("ftfy").__version__,
        "lark": __import__("lark").__version__,
    }
    with out.open("w", encoding="utf-8") as handle:
        handle.write('{"meta": ' + json.dumps(meta) + ',\n "cases": [\n')
        handle.write(",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases))
        handle.write("\n]}\n")
    log.info("recorded %d cases into %s (%.0f KiB)", len(cases), out, out.stat().st_size / 1024)
    if demo_models:
        conds = record_conds(a, demo_models)
        CONDS_OUT.write_text(json.dumps(conds, indent=1) + "\n", encoding="utf-8")
        log.info("recorded %d conditioning cases into %s", len(conds["cases"]), CONDS_OUT)
        sdxl = record_sdxl_conds(a, demo_models)
        SDXL_CONDS_OUT.write_text(json.dumps(sdxl, indent=1) + "\n", encoding="utf-8")
        log.info("recorded %d SDXL conditioning cases into %s", len(sdxl["cases"]), SDXL_CONDS_OUT)


if __name__ == "__main__":
    main()
