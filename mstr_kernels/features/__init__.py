"""Speech features for the corpora: HuBERT layer outputs stored one file per utterance."""
