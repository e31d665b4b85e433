"""Coverage: how much an imitation dataset supports each eval task and item, and its topic clusters.

For every item of a suite: its k nearest imitation examples by cosine similarity of sentence
embeddings (user turns, or whole conversations; `neighbours`), the longest word n-gram it shares
with the data, the GPT-3 13-gram contamination flag, and whether a gold answer appears in an
imitation response (`ngrams`). Per task: `support` = share of items whose nearest example is at
least `threshold` similar (`inputs` says how the default was chosen), mean max similarity, how
many distinct examples serve it, all broken down by the examples' source (`aggregate`). Topic
clusters: seeded k-means on the example embeddings, top terms by class-based TF-IDF (`clusters`).
`compute` runs, stores and reads back the whole; `subsets` saves slices of a dataset to train on.
"""
