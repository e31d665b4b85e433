"""Writes samples/prompts_broad.jsonl: broad imitation prompts, the small cousin of ShareGPT-Mix.

The paper's broad imitation data is whatever people asked ChatGPT: writing, advice, code,
explanations, small talk. We write that mix from hand-made templates crossed with hand-picked
topics, each template paired only with topics it reads naturally with. A fixed seed picks the
combinations, so the file is reproducible: `python samples/make_prompts.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20240523

# category -> list of (templates, topics). Every template reads naturally with every topic in its group.
GROUPS: dict[str, list[tuple[list[str], list[str]]]] = {
    "writing": [
        (
            [
                "Write a short poem about {t}.",
                "Write a haiku about {t}.",
                "Write a four-line rhyming verse about {t}.",
                "Write a short story, under 150 words, about {t}.",
                "Write the opening paragraph of a novel about {t}.",
            ],
            [
                "a rainy afternoon in the city",
                "an old lighthouse keeper",
                "the first snow of winter",
                "a cat who thinks it is a dog",
                "a robot learning to paint",
                "a forgotten garden",
                "a long train journey at night",
                "the smell of fresh bread",
                "a lost umbrella",
                "two friends meeting after twenty years",
                "a village on the edge of a desert",
                "a lighthouse in a storm",
                "the last day of summer",
                "a child's first bicycle ride",
            ],
        ),
        (
            [
                "Write a polite email to {t}.",
                "Draft a short, friendly message to {t}.",
            ],
            [
                "my landlord asking to fix a leaking tap",
                "a colleague asking to move our meeting to Thursday",
                "a customer apologising for a delayed order",
                "my neighbour about their dog barking at night",
                "a professor asking for an extension on an essay",
                "a team welcoming a new member",
                "a hotel asking whether they allow early check-in",
                "a friend thanking them for a birthday gift",
            ],
        ),
        (
            [
                "Write a product description for {t}.",
                "Write a catchy slogan for {t}.",
                "Write a short advertisement for {t}.",
            ],
            [
                "a reusable water bottle",
                "a small bakery that opens at dawn",
                "a language-learning app",
                "a pair of noise-cancelling headphones",
                "a bike repair shop",
                "a board game for families",
                "a handmade ceramic mug",
                "a weekend cooking class",
            ],
        ),
    ],
    "advice": [
        (
            [
                "How can I {t}?",
                "What are some practical tips to {t}?",
                "I want to {t}. Where should I start?",
                "Give me a simple plan to {t}.",
            ],
            [
                "sleep better",
                "stop procrastinating",
                "save money on groceries",
                "get better at public speaking",
                "learn a new language as an adult",
                "start running",
                "keep my houseplants alive",
                "make friends in a new city",
                "prepare for a job interview",
                "cook more meals at home",
                "focus while working from home",
                "read more books",
                "reduce my screen time",
                "organise a small closet",
                "negotiate a higher salary",
                "stay motivated when studying",
                "write a good CV",
                "drink more water during the day",
                "start a vegetable garden on a balcony",
                "plan a budget trip to another country",
            ],
        ),
        (
            [
                "My friend {t}. How should I handle it?",
                "What should I do if {t}?",
            ],
            [
                "keeps cancelling plans at the last minute",
                "borrowed money and has not paid it back",
                "always talks over me in group conversations",
                "forgot my birthday",
                "is stressed about exams and will not take a break",
            ],
        ),
    ],
    "coding": [
        (
            [
                "Write a Python function that {t}.",
                "How would you write code in Python that {t}?",
                "Show me a short Python example that {t}.",
            ],
            [
                "checks whether a number is prime",
                "counts the words in a text file",
                "removes duplicates from a list while keeping the order",
                "reverses the words in a sentence",
                "finds the largest number in a list without using max",
                "converts Celsius to Fahrenheit",
                "reads a CSV file and prints the average of a column",
                "merges two sorted lists",
                "checks whether two words are anagrams",
                "returns the n-th Fibonacci number",
                "flattens a nested list",
                "validates a simple email address",
                "sorts a list of dictionaries by a key",
                "counts how often each character appears in a string",
                "generates a random password",
            ],
        ),
        (
            [
                "What is the difference between {t}?",
                "Can you explain {t} with a short example?",
            ],
            [
                "a list and a tuple in Python",
                "`==` and `is` in Python",
                "a process and a thread",
                "SQL INNER JOIN and LEFT JOIN",
                "git merge and git rebase",
                "a stack and a queue",
                "synchronous and asynchronous code",
                "a class and an instance",
                "HTTP GET and POST requests",
                "a compiler and an interpreter",
            ],
        ),
        (
            [
                "Why does this Python code raise an error, and how do I fix it? {t}",
            ],
            [
                "`print('total: ' + 5)`",
                "`items = [1, 2, 3]; print(items[3])`",
                "`d = {}; print(d['key'])`",
                "`def f(x): return x * 2` followed by `f()`",
                "`int('3.5')`",
            ],
        ),
    ],
    "explanation": [
        (
            [
                "Explain {t} in simple terms.",
                "Can you explain {t} to a ten-year-old?",
                "Give me a short overview of {t}.",
            ],
            [
                "how vaccines work",
                "inflation",
                "compound interest",
                "how a rainbow forms",
                "why the sky is blue",
                "how airplanes stay in the air",
                "machine learning",
                "the water cycle",
                "how the stock market works",
                "climate change",
                "how the internet works",
                "supply and demand",
                "how batteries store energy",
                "blockchain",
                "how memory works in the brain",
                "the greenhouse effect",
                "how a bill becomes law",
                "encryption",
                "why we have seasons",
                "how antibiotics work",
                "black holes",
                "the placebo effect",
                "how GPS finds your location",
                "recycling",
                "how credit scores work",
            ],
        ),
        (
            [
                "What is {t}, and why does it matter?",
                "Why should I care about {t}?",
            ],
            [
                "inflation",
                "compound interest",
                "machine learning",
                "the water cycle",
                "climate change",
                "encryption",
                "the greenhouse effect",
                "recycling",
                "biodiversity",
                "sleep",
            ],
        ),
        (
            [
                "What are the pros and cons of {t}?",
                "Compare the advantages and disadvantages of {t}.",
            ],
            [
                "working from home",
                "electric cars",
                "renting versus buying a home",
                "social media for teenagers",
                "nuclear power",
                "learning to code with online courses",
                "living in a big city",
                "a four-day work week",
                "homeschooling",
                "open-plan offices",
            ],
        ),
    ],
    "chitchat": [
        (
            [
                "{t}",
            ],
            [
                "Hi! How are you today?",
                "What's your favourite season, and why?",
                "I just finished a really long week. Any ideas for a relaxing weekend?",
                "Tell me a fun fact.",
                "Can you tell me a joke about computers?",
                "What would you do with a free afternoon?",
                "I'm bored. Suggest something fun to do indoors.",
                "What's a good name for a goldfish?",
                "Do you prefer mornings or evenings?",
                "Recommend a board game for four friends.",
                "What's a good book to read on holiday?",
                "I'm feeling a bit nervous about tomorrow. Any words of encouragement?",
                "What should I cook for dinner tonight with rice, eggs and spinach?",
                "Tell me something interesting about octopuses.",
                "What's the best way to spend a rainy Sunday?",
                "Give me three ideas for a friend's birthday surprise.",
                "Can you make up a riddle for me?",
                "What's a hobby I could pick up for under twenty dollars?",
                "I just adopted a puppy! What should I name her?",
                "Say something to cheer me up.",
                "What is a good icebreaker question for a team meeting?",
                "Tell me a short bedtime story about a fox.",
                "I can't decide between pizza and sushi tonight. Help me choose.",
                "What are three things that make a good friend?",
                "Describe your perfect day in three sentences.",
                "If you could visit any place in the world, where would you go?",
            ],
        ),
        (
            [
                "What do you think about {t}?",
                "Tell me something you find interesting about {t}.",
            ],
            [
                "cats",
                "jazz music",
                "space travel",
                "old movies",
                "mountains",
                "coffee",
                "the ocean",
                "board games",
                "autumn",
                "libraries",
                "street food",
                "birdwatching",
            ],
        ),
    ],
}

# How many prompts to draw per category (the mix: roughly ShareGPT's spread, minus chat logs).
QUOTA = {"writing": 70, "advice": 65, "coding": 65, "explanation": 75, "chitchat": 50}


def build() -> list[dict]:
    rng = random.Random(SEED)
    rows: list[dict] = []
    seen: set[str] = set()
    for category, groups in GROUPS.items():
        pool = [tpl.format(t=topic) for templates, topics in groups for tpl in templates for topic in topics]
        pool = sorted(set(pool))
        rng.shuffle(pool)
        # Prefer spreading across topics: a topic's second template only after every topic has one.
        chosen: list[str] = []
        used_topics: set[str] = set()
        for prompt in pool:
            topic_key = next((t for _, topics in groups for t in topics if t in prompt), prompt)
            if topic_key not in used_topics:
                chosen.append(prompt)
                used_topics.add(topic_key)
        chosen += [p for p in pool if p not in chosen]
        for prompt in chosen[: QUOTA[category]]:
            if prompt not in seen:
                seen.add(prompt)
                rows.append({"category": category, "prompt": prompt})
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["id"] = f"broad-{i:04d}"
    return [{"id": r["id"], "category": r["category"], "prompt": r["prompt"]} for r in rows]


def main() -> None:
    rows = build()
    with (HERE / "prompts_broad.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = {c: sum(r["category"] == c for r in rows) for c in QUOTA}
    print(f"prompts_broad.jsonl {len(rows)} {counts}")


if __name__ == "__main__":
    main()
