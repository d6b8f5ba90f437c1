"""The "Logit lens" and "Head atlas" tabs: what the layers and heads mean (what each layer would predict, which
heads do what)."""
