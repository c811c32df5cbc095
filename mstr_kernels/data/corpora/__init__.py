"""The paper's corpora. Importing this package registers "iemocap", "meld" and "cremad" with
`mstr_kernels.data.base.register_dataset`; each module also has `scan(root)`, which
`mstr extract` uses to find the audio files and labels of a corpus folder."""
from . import cremad, iemocap, meld
from .common import CorpusLayoutError, Problem, ScanResult, Utterance

CORPORA = {module.NAME: module for module in (iemocap, meld, cremad)}

__all__ = ["CORPORA", "CorpusLayoutError", "Problem", "ScanResult", "Utterance"]
