"""The data sets and the batches the loop trains on: `(x, y, idx)`, whatever the source."""
