"""The paper's protocol per corpus (Table 1 and section 3.2): one place, read by the corpus
builders into `DatasetBundle.preset`.

Keys: epochs, lr, batch_size, fixed_length (the paper's pad/cut length, used by
`--fixed-length paper`), metrics (what the paper reports), select_metric (the validation metric
for model selection: UA where the paper reports WA & UA). Adam, cross-entropy, 4 blocks,
16 heads, p=3, levels=4 for all three.
"""
PAPER_PRESETS = {
    "iemocap": {"epochs": 150, "lr": 1e-4, "batch_size": 32, "fixed_length": 326,
                "metrics": ["WA", "UA"], "select_metric": "UA"},
    "meld": {"epochs": 150, "lr": 5e-6, "batch_size": 32, "fixed_length": 224,
             "metrics": ["WF1"], "select_metric": "WF1"},
    "cremad": {"epochs": 100, "lr": 5e-5, "batch_size": 32, "fixed_length": 150,
               "metrics": ["WA", "UA"], "select_metric": "UA"},
}
