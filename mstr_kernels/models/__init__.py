"""Models: MSTR, the vanilla Transformer baseline, and their Params/FLOPs (Table 2)."""
from .flops import PAPER_TABLE2, attention_macs, linear_macs_per_frame, model_flops, table2
from .transformer import (MODEL_NAMES, MSTR, FullSelfAttention, MSTRConfig,
                          SpeechTransformerClassifier, VanillaTransformer, build_model,
                          count_params, model_name)
from .streaming import MSTRStream

__all__ = ["MODEL_NAMES", "MSTR", "FullSelfAttention", "MSTRConfig", "MSTRStream", "PAPER_TABLE2",
           "SpeechTransformerClassifier", "VanillaTransformer", "attention_macs", "build_model",
           "count_params", "linear_macs_per_frame", "model_flops", "model_name", "table2"]
