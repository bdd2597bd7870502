"""Our SentencePiece tokenizer as a Hugging Face fast tokenizer (tokenizer.json) that gives exactly our ids.

transformers' `SpmConverter.build_tokenizer_from_spm_proto` rebuilds SentencePiece's model, normalizer
(precompiled NFKC map, whitespace handling, dummy prefix) and decoder from the model proto. On top: the
control symbols [CLS] [SEP] [MASK] (and [PAD], [UNK]) can never be produced from text, as in SentencePiece,
and the post-processor writes `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` with token types 0…0 1…1, as the
shards do. `AutoTokenizer.from_pretrained(export)` then loads it (tokenizer_config names the class).
"""

from __future__ import annotations

from pathlib import Path

from electra_dist.data.tokenizer import MODEL, SentencePieceTokenizer

_NEVER = -1e9  # the score that keeps a piece out of every Unigram segmentation


def hf_tokenizer(tokenizer_dir: str | Path, model_max_length: int = 512):
    """A `PreTrainedTokenizerFast` equivalent to `SentencePieceTokenizer(tokenizer_dir)`."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import SpmConverter

    ours = SentencePieceTokenizer(tokenizer_dir)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((Path(tokenizer_dir) / MODEL).read_bytes())
    # unigram: (piece, score); control and unknown pieces (types 2, 3) are never segmentation candidates
    vocab: list | dict
    if proto.trainer_spec.model_type == 1:
        vocab = [(p.piece, p.score if p.type not in (2, 3) else _NEVER) for p in proto.pieces]
    else:
        vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    tok = SpmConverter.build_tokenizer_from_spm_proto(proto, vocab)
    if tok is None:
        raise ValueError(f"{tokenizer_dir}: SentencePiece model type {proto.trainer_spec.model_type} has no converter")
    s = ours.special
    tok.post_processor = TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", s.cls), ("[SEP]", s.sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def save_hf_tokenizer(tokenizer_dir: str | Path, out: str | Path, model_max_length: int = 512) -> Path:
    """tokenizer.json + tokenizer_config.json + special_tokens_map.json into `out`. The config names
    PreTrainedTokenizerFast, the class every transformers from the floor (4.57) on loads (5.x writes its own
    "TokenizersBackend", which 4.x does not know)."""
    import json

    hf_tokenizer(tokenizer_dir, model_max_length).save_pretrained(str(out))
    config = Path(out) / "tokenizer_config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        c["tokenizer_class"] = "PreTrainedTokenizerFast"
        config.write_text(json.dumps(c, indent=2, ensure_ascii=False) + "\n")
    return Path(out)
