"""The "Step through" tab: the decoding step by step (the stepper, its charts of candidates) and the text a
trace read, coloured by surprisal."""
