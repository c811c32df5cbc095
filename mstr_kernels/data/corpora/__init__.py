"""The paper's corpora and a plain folder layout. Importing this package registers "iemocap",
"meld", "cremad" and "folder" (any audio files, labels from an optional CSV) with
`mstr_kernels.data.registry`; each module also has `scan(root)`, which `mstr extract` uses to
find the audio files and labels of a corpus folder."""
from . import cremad, folder, iemocap, meld
from .common import CorpusLayoutError, Problem, ScanResult, Utterance

CORPORA = {module.NAME: module for module in (iemocap, meld, cremad, folder)}

__all__ = ["CORPORA", "CorpusLayoutError", "Problem", "ScanResult", "Utterance"]
