"""python -m explorer.textbook: train the copy model and write it to assets/."""

from .train import main

main()
