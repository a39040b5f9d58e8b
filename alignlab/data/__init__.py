"""The data layer: load feedback records from local files, report what happened to every row,
and tokenize pairs for training. See docs/data.md."""

from alignlab.data.errors import DataError
from alignlab.data.loaders import LoadResult, load_records
from alignlab.data.records import (
    BinaryRecord,
    CritiqueRecord,
    PairwiseRecord,
    RankingRecord,
    RatingRecord,
    Record,
    prompt_messages,
)
from alignlab.data.report import DataReport
from alignlab.data.tokenize import EncodedPair, encode_pairs, encode_prompt, encode_prompt_response

__all__ = [
    "BinaryRecord",
    "CritiqueRecord",
    "DataError",
    "DataReport",
    "EncodedPair",
    "LoadResult",
    "PairwiseRecord",
    "RankingRecord",
    "RatingRecord",
    "Record",
    "encode_pairs",
    "encode_prompt",
    "encode_prompt_response",
    "load_records",
    "prompt_messages",
]
