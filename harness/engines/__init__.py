"""What methods stand on: the generative-retrieval engine (SIDs → generator → beam search → items) and the shared
training loop."""
