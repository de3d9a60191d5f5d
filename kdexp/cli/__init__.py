"""The entry points: `kdexp` (the Hydra main), `kdexp-report`, `kdexp-export`, and the fast process
exit behind them (`entry`). The top layer: it may import every other package of kdexp."""
