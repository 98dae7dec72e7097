"""Fine-tuning and evaluation on labelled videos: `finetune` and `evaluate` (issue 8).

`datasets` (layouts, CSVs, probing, `ClipDataset`), `sampling` (clip starts and crops),
`adapt` (head replacement, block freezing, weight loading), `finetune` (the training run),
`evaluate` (prediction and reports), `metrics`, `plots`, `synthetic` (a toy dataset).
"""
