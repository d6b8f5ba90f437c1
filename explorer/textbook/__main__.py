"""python -m explorer.textbook [OUTPUT]: train the copy model and write OUTPUT (.safetensors, with its .json beside).

Without OUTPUT: in a source checkout it retrains the shipped checkpoint, explorer/textbook/trained/textbook-copy.*;
in an installed package, which stays as shipped, it writes to the cache folder (explorer.cache.cache_dir()).
"""

from .train import main

main()
