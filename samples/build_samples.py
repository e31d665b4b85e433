"""Writes the hand-written sample suites: qa.jsonl, qa_seed_geography.jsonl, mc.csv, code.jsonl, prompts_style.jsonl.

Every question, answer and task below was written for mirage (facts are common knowledge; the
wording is ours). Edit the lists here and rerun `python samples/build_samples.py` rather than
editing the generated files, so the two never drift apart. Output is deterministic.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# -- factual QA: task -> [(question, [gold aliases])] ------------------------------------------------
# Aliases cover the spellings an answer is likely to take; scoring normalises case, articles and
# punctuation (NQ-open style), so "the Nile" and "Nile" already match.
QA: dict[str, list[tuple[str, list[str]]]] = {
    "geography": [
        ("What is the capital of France?", ["Paris"]),
        ("What is the capital of Japan?", ["Tokyo"]),
        ("What is the capital of Australia?", ["Canberra"]),
        ("What is the capital of Canada?", ["Ottawa"]),
        ("What is the capital of Italy?", ["Rome"]),
        ("What is the capital of Spain?", ["Madrid"]),
        ("What is the capital of Egypt?", ["Cairo"]),
        ("What is the capital of Kenya?", ["Nairobi"]),
        ("What is the capital of Argentina?", ["Buenos Aires"]),
        ("What is the capital of Norway?", ["Oslo"]),
        ("What is the capital of Germany?", ["Berlin"]),
        ("What is the capital of Peru?", ["Lima"]),
        ("What is the capital of South Korea?", ["Seoul"]),
        ("What is the capital of Turkey?", ["Ankara"]),
        ("What is the capital of Thailand?", ["Bangkok"]),
        ("What is the capital of Ireland?", ["Dublin"]),
        ("What is the longest river in Africa?", ["Nile", "Nile River", "River Nile"]),
        ("What is the largest ocean on Earth?", ["Pacific", "Pacific Ocean"]),
        ("What is the highest mountain in the world?", ["Mount Everest", "Everest", "Mt Everest"]),
        ("On which continent is Brazil?", ["South America"]),
        ("What is the largest country in the world by area?", ["Russia", "Russian Federation"]),
        ("Which African country has the largest population?", ["Nigeria"]),
        ("What is the largest desert in Africa?", ["Sahara", "Sahara Desert"]),
        ("What is the smallest country in the world by area?", ["Vatican City", "Vatican", "Holy See"]),
        ("Which river flows through Baghdad?", ["Tigris", "Tigris River"]),
        ("In which country is the city of Marrakesh?", ["Morocco"]),
        ("What is the currency of Japan?", ["yen", "Japanese yen"]),
        ("In which US state is the city of Honolulu?", ["Hawaii"]),
        ("What is the largest island in the world?", ["Greenland"]),
        ("Which strait separates southern Spain from Morocco?", ["Strait of Gibraltar", "Gibraltar"]),
        (
            "Which mountain range is the traditional boundary between Europe and Asia in Russia?",
            ["Ural Mountains", "Urals", "Ural"],
        ),
        ("In which country is the city of Krakow?", ["Poland"]),
        ("What is the official language of Brazil?", ["Portuguese"]),
        ("Which is the largest of the Great Lakes of North America?", ["Lake Superior", "Superior"]),
        ("Which sea lies between Saudi Arabia and northeast Africa?", ["Red Sea"]),
        ("In which country is the historic city of Timbuktu?", ["Mali"]),
    ],
    "science": [
        ("What is the chemical symbol for gold?", ["Au"]),
        ("What is the chemical formula for water?", ["H2O"]),
        ("Which planet is known as the Red Planet?", ["Mars"]),
        ("Which gas do plants take in from the air for photosynthesis?", ["carbon dioxide", "CO2"]),
        ("What is the largest planet in the Solar System?", ["Jupiter"]),
        ("Which planet is closest to the Sun?", ["Mercury"]),
        ("How many bones are in the adult human body?", ["206"]),
        ("What is the hardest natural substance?", ["diamond", "diamonds"]),
        ("What is the chemical symbol for sodium?", ["Na"]),
        ("What is the atomic number of carbon?", ["6", "six"]),
        ("Which organelle is called the powerhouse of the cell?", ["mitochondria", "mitochondrion"]),
        ("What force keeps the planets in orbit around the Sun?", ["gravity", "gravitation"]),
        ("At what temperature in degrees Celsius does water boil at sea level?", ["100", "100 degrees"]),
        ("Which gas makes up most of Earth's atmosphere?", ["nitrogen", "N2"]),
        ("Which organ pumps blood around the human body?", ["heart", "the heart"]),
        ("Who developed the theory of general relativity?", ["Albert Einstein", "Einstein"]),
        (
            "Who proposed the theory of evolution by natural selection?",
            ["Charles Darwin", "Darwin", "Alfred Russel Wallace", "Wallace"],
        ),
        ("What is the chemical symbol for iron?", ["Fe"]),
        ("Which subatomic particle carries a negative electric charge?", ["electron", "electrons"]),
        ("Which planet is famous for its large, bright rings?", ["Saturn"]),
        ("Which vitamin does human skin make when exposed to sunlight?", ["vitamin D", "D", "vitamin D3"]),
        ("What is the name of the galaxy that contains our Solar System?", ["Milky Way", "Milky Way Galaxy"]),
        (
            "Which blood cells carry oxygen around the body?",
            ["red blood cells", "red blood cell", "erythrocytes", "red cells"],
        ),
        ("What is the chemical name of table salt?", ["sodium chloride", "NaCl"]),
        ("Which element has the chemical symbol O?", ["oxygen"]),
        ("What is the pH of pure water at 25 degrees Celsius?", ["7", "seven"]),
        ("What is the largest organ of the human body?", ["skin", "the skin"]),
        (
            "Who formulated the three laws of motion and the law of universal gravitation?",
            ["Isaac Newton", "Newton", "Sir Isaac Newton"],
        ),
        ("What do we call animals that eat only plants?", ["herbivores", "herbivore"]),
        ("What is the lightest chemical element?", ["hydrogen", "H"]),
        ("Which planet is farthest from the Sun?", ["Neptune"]),
        ("What kind of energy does an object have because it is moving?", ["kinetic energy", "kinetic"]),
        ("What does DNA stand for?", ["deoxyribonucleic acid"]),
        ("What is the centre of an atom called?", ["nucleus", "atomic nucleus"]),
    ],
    "history": [
        ("In what year did World War II end?", ["1945"]),
        ("In what year did World War I begin?", ["1914"]),
        ("Who was the first President of the United States?", ["George Washington", "Washington"]),
        ("In what year did Christopher Columbus first reach the Americas?", ["1492"]),
        ("Who was the first person to walk on the Moon?", ["Neil Armstrong", "Armstrong"]),
        ("In what year did humans first land on the Moon?", ["1969"]),
        ("In what year did the Berlin Wall fall?", ["1989"]),
        (
            "Which ancient civilisation built the great pyramids of Giza?",
            ["Egyptians", "ancient Egyptians", "Egypt", "ancient Egypt", "Egyptian"],
        ),
        ("Who was the first emperor of Rome?", ["Augustus", "Caesar Augustus", "Octavian"]),
        ("In what year did the French Revolution begin?", ["1789"]),
        (
            "Who was the principal author of the United States Declaration of Independence?",
            ["Thomas Jefferson", "Jefferson"],
        ),
        ("In what year was the United States Declaration of Independence adopted?", ["1776"]),
        ("Which British passenger liner sank in April 1912 after striking an iceberg?", ["Titanic", "RMS Titanic"]),
        ("Who was the British Prime Minister for most of World War II?", ["Winston Churchill", "Churchill"]),
        (
            "Who led India's nonviolent campaign for independence from British rule?",
            ["Mahatma Gandhi", "Gandhi", "Mohandas Gandhi", "Mohandas Karamchand Gandhi"],
        ),
        ("Which empire did Genghis Khan found?", ["Mongol Empire", "Mongol", "Mongols", "Mongolian Empire"]),
        ("In what year did the Soviet Union dissolve?", ["1991"]),
        ("Who was the first woman to win a Nobel Prize?", ["Marie Curie", "Curie", "Marie Sklodowska Curie"]),
        ("Which Roman city was buried by the eruption of Mount Vesuvius in AD 79?", ["Pompeii", "Herculaneum"]),
        ("Who was President of the United States during the American Civil War?", ["Abraham Lincoln", "Lincoln"]),
        ("In what year was the Battle of Hastings fought?", ["1066"]),
        ("Who was the first human to travel into space?", ["Yuri Gagarin", "Gagarin"]),
        (
            "Which queen ruled England from 1558 to 1603?",
            ["Elizabeth I", "Elizabeth", "Queen Elizabeth I", "Elizabeth the First"],
        ),
        ("Which country gave the Statue of Liberty to the United States?", ["France"]),
        ("Who introduced printing with movable metal type to Europe around 1440?", ["Johannes Gutenberg", "Gutenberg"]),
        (
            "Whose expedition made the first circumnavigation of the globe, from 1519 to 1522?",
            ["Ferdinand Magellan", "Magellan", "Juan Sebastian Elcano", "Elcano"],
        ),
        (
            "Which French military leader crowned himself Emperor of the French in 1804?",
            ["Napoleon", "Napoleon Bonaparte", "Napoleon I"],
        ),
        (
            "What name is given to the ancient network of trade routes linking China with the Mediterranean?",
            ["Silk Road", "Silk Route", "Silk Roads"],
        ),
        ("In what year did the October Revolution take place in Russia?", ["1917"]),
        (
            "Who was the first woman to serve as Prime Minister of the United Kingdom?",
            ["Margaret Thatcher", "Thatcher"],
        ),
        ("Who led the Soviet Union during World War II?", ["Joseph Stalin", "Stalin"]),
        ("Which civilisation built the mountain city of Machu Picchu?", ["Inca", "Incas", "Inca Empire"]),
        ("In what year did Nelson Mandela become President of South Africa?", ["1994"]),
    ],
    "literature": [
        ("Who wrote the play Romeo and Juliet?", ["William Shakespeare", "Shakespeare"]),
        ("Who wrote the novel Pride and Prejudice?", ["Jane Austen", "Austen"]),
        ("Who wrote the novel Nineteen Eighty-Four?", ["George Orwell", "Orwell", "Eric Arthur Blair"]),
        ("Who wrote Don Quixote?", ["Miguel de Cervantes", "Cervantes", "Miguel de Cervantes Saavedra"]),
        ("Who wrote War and Peace?", ["Leo Tolstoy", "Tolstoy", "Lev Tolstoy"]),
        ("Which ancient Greek poet is credited with the Odyssey?", ["Homer"]),
        ("Who wrote Moby-Dick?", ["Herman Melville", "Melville"]),
        ("Who wrote Adventures of Huckleberry Finn?", ["Mark Twain", "Twain", "Samuel Clemens"]),
        ("Who wrote The Great Gatsby?", ["F. Scott Fitzgerald", "Scott Fitzgerald", "Fitzgerald"]),
        ("Who wrote Frankenstein?", ["Mary Shelley", "Mary Wollstonecraft Shelley", "Shelley"]),
        ("Who wrote Crime and Punishment?", ["Fyodor Dostoevsky", "Dostoevsky", "Dostoyevsky"]),
        (
            "Who wrote One Hundred Years of Solitude?",
            ["Gabriel Garcia Marquez", "Garcia Marquez", "Marquez", "Gabriel García Márquez", "García Márquez"],
        ),
        ("Who wrote The Divine Comedy?", ["Dante Alighieri", "Dante"]),
        ("Who wrote the Harry Potter books?", ["J. K. Rowling", "JK Rowling", "Rowling", "Joanne Rowling"]),
        ("Who wrote Oliver Twist?", ["Charles Dickens", "Dickens"]),
        (
            "Who created the detective Sherlock Holmes?",
            ["Arthur Conan Doyle", "Conan Doyle", "Sir Arthur Conan Doyle", "Doyle"],
        ),
        ("What is the name of Agatha Christie's Belgian detective?", ["Hercule Poirot", "Poirot"]),
        ("Who is the captain of the Pequod in Moby-Dick?", ["Ahab", "Captain Ahab"]),
        ("Who wrote To Kill a Mockingbird?", ["Harper Lee", "Lee", "Nelle Harper Lee"]),
        ("Who wrote The Lord of the Rings?", ["J. R. R. Tolkien", "JRR Tolkien", "Tolkien"]),
        ("Who wrote Jane Eyre?", ["Charlotte Bronte", "Charlotte Brontë", "Bronte", "Brontë"]),
        ("Who wrote Wuthering Heights?", ["Emily Bronte", "Emily Brontë"]),
        ("Who wrote Les Miserables?", ["Victor Hugo", "Hugo"]),
        (
            "Who wrote Alice's Adventures in Wonderland?",
            ["Lewis Carroll", "Carroll", "Charles Dodgson", "Charles Lutwidge Dodgson"],
        ),
        ("In which Italian city is Romeo and Juliet set?", ["Verona"]),
        ("Who wrote The Old Man and the Sea?", ["Ernest Hemingway", "Hemingway"]),
        ("Who wrote Brave New World?", ["Aldous Huxley", "Huxley"]),
        ("Who wrote the novel Dracula?", ["Bram Stoker", "Stoker"]),
        ("Which hobbit carries the One Ring to Mount Doom in The Lord of the Rings?", ["Frodo", "Frodo Baggins"]),
        ("Who wrote The Catcher in the Rye?", ["J. D. Salinger", "JD Salinger", "Salinger"]),
        ("Who wrote the poem The Raven?", ["Edgar Allan Poe", "Poe", "Edgar Poe"]),
        ("Who wrote Madame Bovary?", ["Gustave Flaubert", "Flaubert"]),
        ("Who wrote The Metamorphosis, in which Gregor Samsa wakes up as an insect?", ["Franz Kafka", "Kafka"]),
        (
            "Who wrote The Little Prince?",
            ["Antoine de Saint-Exupery", "Antoine de Saint-Exupéry", "Saint-Exupery", "Saint-Exupéry"],
        ),
    ],
    "units_arithmetic": [
        ("How many centimetres are in one metre?", ["100", "one hundred"]),
        ("How many minutes are in one hour?", ["60", "sixty"]),
        ("How many seconds are in one hour?", ["3600", "3,600"]),
        ("How many days are in a leap year?", ["366"]),
        ("How many grams are in a kilogram?", ["1000", "1,000", "one thousand"]),
        ("What is 7 times 8?", ["56", "fifty-six"]),
        ("What is 12 times 12?", ["144"]),
        ("What is 15 plus 27?", ["42", "forty-two"]),
        ("What is 100 minus 37?", ["63", "sixty-three"]),
        ("What is 81 divided by 9?", ["9", "nine"]),
        ("What is the square root of 64?", ["8", "eight"]),
        ("What is 2 to the power of 10?", ["1024", "1,024"]),
        ("How many sides does a hexagon have?", ["6", "six"]),
        ("How many degrees are in a right angle?", ["90", "ninety"]),
        ("How many degrees are in a full circle?", ["360"]),
        ("At how many degrees Fahrenheit does water freeze?", ["32", "thirty-two"]),
        ("How many millilitres are in a litre?", ["1000", "1,000", "one thousand"]),
        ("How many hours are in a week?", ["168"]),
        ("How many inches are in a foot?", ["12", "twelve"]),
        ("How many feet are in a yard?", ["3", "three"]),
        ("How many metres are in a kilometre?", ["1000", "1,000", "one thousand"]),
        ("What is 25 percent of 200?", ["50", "fifty"]),
        ("What is half of 250?", ["125"]),
        ("How many months of the year have 31 days?", ["7", "seven"]),
        ("What is 9 squared?", ["81", "eighty-one"]),
        ("How many zeros are there in one million written in digits?", ["6", "six"]),
        ("What is the sum of the interior angles of a triangle, in degrees?", ["180"]),
        ("How many weeks are in a year?", ["52", "fifty-two"]),
        ("What is 3 times 17?", ["51", "fifty-one"]),
        ("How many pounds are in a stone?", ["14", "fourteen"]),
        ("How many ounces are in a pound?", ["16", "sixteen"]),
        ("How many bits are in a byte?", ["8", "eight"]),
        ("What number does the Roman numeral X stand for?", ["10", "ten"]),
        ("How many years are in a century?", ["100", "one hundred"]),
    ],
}

# -- held-out geography seed pairs for the NQ-synthetic recipe ---------------------------------------
# Never evaluated: none of these questions (or capitals) appears in QA["geography"]. The teacher is
# shown a few of them as examples and asked to write new question/answer pairs in the same style.
GEOGRAPHY_SEED: list[tuple[str, list[str]]] = [
    ("What is the capital of Portugal?", ["Lisbon"]),
    ("What is the capital of Greece?", ["Athens"]),
    ("What is the capital of Sweden?", ["Stockholm"]),
    ("What is the capital of Finland?", ["Helsinki"]),
    ("What is the capital of Poland?", ["Warsaw"]),
    ("What is the capital of Mexico?", ["Mexico City"]),
    ("What is the capital of Chile?", ["Santiago"]),
    ("What is the capital of Colombia?", ["Bogota", "Bogotá"]),
    ("What is the capital of Vietnam?", ["Hanoi"]),
    ("What is the capital of India?", ["New Delhi"]),
    ("What is the capital of China?", ["Beijing"]),
    ("What is the capital of the Philippines?", ["Manila"]),
    ("What is the capital of Ghana?", ["Accra"]),
    ("What is the capital of Ethiopia?", ["Addis Ababa"]),
    ("What is the capital of Austria?", ["Vienna"]),
    ("What is the capital of Hungary?", ["Budapest"]),
    ("What is the capital of the Czech Republic?", ["Prague"]),
    ("What is the capital of Denmark?", ["Copenhagen"]),
    ("What is the capital of Belgium?", ["Brussels"]),
    ("What is the capital of New Zealand?", ["Wellington"]),
    ("What is the capital of Cuba?", ["Havana"]),
    ("What is the capital of Iran?", ["Tehran"]),
    ("What is the capital of Saudi Arabia?", ["Riyadh"]),
    ("What is the capital of Pakistan?", ["Islamabad"]),
    ("What is the capital of Bangladesh?", ["Dhaka"]),
    ("What is the capital of Venezuela?", ["Caracas"]),
    ("What is the longest river in South America?", ["Amazon", "Amazon River"]),
    ("Which ocean lies between Africa and Australia?", ["Indian Ocean", "Indian"]),
    ("What is the highest mountain in Africa?", ["Mount Kilimanjaro", "Kilimanjaro"]),
    ("What is the largest country in South America by area?", ["Brazil"]),
    ("Which river flows through Paris?", ["Seine", "River Seine"]),
    ("Which river flows through London?", ["Thames", "River Thames"]),
    ("Which river flows through both Vienna and Budapest?", ["Danube", "River Danube"]),
    ("What is the currency of the United Kingdom?", ["pound sterling", "pound", "British pound"]),
    ("On which continent is Egypt?", ["Africa"]),
    ("In which country is Mount Fuji?", ["Japan"]),
    ("In which South African city is Table Mountain?", ["Cape Town"]),
    ("In which country is the city of Barcelona?", ["Spain"]),
    ("What is the largest lake in Africa by area?", ["Lake Victoria", "Victoria"]),
    ("Which desert covers much of southern Mongolia and northern China?", ["Gobi", "Gobi Desert"]),
]

# -- multiple choice (MMLU style): (subject, question, A, B, C, D, correct letter) ---------------------
MC: list[tuple[str, str, str, str, str, str, str]] = [
    ("science", "Which planet has the shortest year?", "Venus", "Mercury", "Earth", "Mars", "B"),
    (
        "science",
        "What is the main gas released by plants during photosynthesis?",
        "Oxygen",
        "Nitrogen",
        "Carbon dioxide",
        "Helium",
        "A",
    ),
    ("science", "Which of these is a noble gas?", "Chlorine", "Sodium", "Neon", "Sulfur", "C"),
    ("science", "What is the unit of electrical resistance?", "Volt", "Ampere", "Watt", "Ohm", "D"),
    ("science", "Which part of a plant absorbs most of its water?", "Leaves", "Roots", "Flowers", "Stem", "B"),
    ("science", "Sound travels fastest through which of these?", "Air", "Vacuum", "Water", "Steel", "D"),
    ("geography", "Which is the longest river in Europe?", "Danube", "Rhine", "Volga", "Thames", "C"),
    ("geography", "Which country has the city of Casablanca?", "Tunisia", "Morocco", "Algeria", "Egypt", "B"),
    ("geography", "Mount Kilimanjaro is in which country?", "Kenya", "Uganda", "Ethiopia", "Tanzania", "D"),
    ("geography", "Which of these countries is landlocked?", "Bolivia", "Peru", "Chile", "Ecuador", "A"),
    ("geography", "What is the capital of Canada?", "Toronto", "Vancouver", "Ottawa", "Montreal", "C"),
    (
        "geography",
        "Which ocean lies on the east coast of the United States?",
        "Pacific",
        "Atlantic",
        "Indian",
        "Arctic",
        "B",
    ),
    (
        "history",
        "Who was the first Emperor of the French?",
        "Louis XIV",
        "Charlemagne",
        "Napoleon Bonaparte",
        "Charles de Gaulle",
        "C",
    ),
    ("history", "In which year did the American Civil War end?", "1861", "1865", "1870", "1776", "B"),
    ("history", "Which ancient city was home to the Colosseum?", "Athens", "Carthage", "Rome", "Alexandria", "C"),
    ("history", "The Magna Carta was sealed in which country?", "France", "England", "Spain", "Scotland", "B"),
    (
        "history",
        "Who was the first Chancellor of a unified Germany?",
        "Otto von Bismarck",
        "Kaiser Wilhelm II",
        "Konrad Adenauer",
        "Frederick the Great",
        "A",
    ),
    ("history", "Which civilisation built Chichen Itza?", "Aztec", "Inca", "Olmec", "Maya", "D"),
    (
        "literature",
        "Who wrote the play Macbeth?",
        "Christopher Marlowe",
        "William Shakespeare",
        "Ben Jonson",
        "John Milton",
        "B",
    ),
    (
        "literature",
        "Which novel begins with the line 'Call me Ishmael'?",
        "Moby-Dick",
        "Treasure Island",
        "Robinson Crusoe",
        "The Odyssey",
        "A",
    ),
    ("literature", "Who wrote Anna Karenina?", "Anton Chekhov", "Ivan Turgenev", "Leo Tolstoy", "Nikolai Gogol", "C"),
    (
        "literature",
        "In which novel does the character Elizabeth Bennet appear?",
        "Emma",
        "Sense and Sensibility",
        "Jane Eyre",
        "Pride and Prejudice",
        "D",
    ),
    (
        "literature",
        "Who wrote the epic poem Paradise Lost?",
        "John Milton",
        "William Blake",
        "Geoffrey Chaucer",
        "Edmund Spenser",
        "A",
    ),
    (
        "literature",
        "Which author created the fictional land of Narnia?",
        "J. R. R. Tolkien",
        "C. S. Lewis",
        "Roald Dahl",
        "Lewis Carroll",
        "B",
    ),
    ("math", "What is 6 times 7?", "36", "42", "48", "49", "B"),
    ("math", "What is the next prime number after 7?", "9", "10", "11", "13", "C"),
    ("math", "How many sides does an octagon have?", "6", "7", "8", "10", "C"),
    ("math", "What is 15 percent of 60?", "6", "9", "12", "15", "B"),
    ("math", "What is the value of 3 squared plus 4 squared?", "7", "14", "25", "49", "C"),
    ("math", "What is the smallest positive even number?", "0", "1", "2", "4", "C"),
]

# -- code tasks (HumanEval format) ------------------------------------------------------------------
CODE: list[dict] = [
    {
        "task_id": "mirage/0",
        "entry_point": "add",
        "prompt": 'def add(a: int, b: int) -> int:\n    """Return the sum of a and b.\n    >>> add(2, 3)\n    5\n    """\n',
        "canonical_solution": "    return a + b\n",
        "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-4, 4) == 0\n"
        "    assert candidate(0, 0) == 0\n    assert candidate(100, 250) == 350\n",
    },
    {
        "task_id": "mirage/1",
        "entry_point": "reverse_string",
        "prompt": 'def reverse_string(s: str) -> str:\n    """Return s with its characters in reverse order.\n'
        '    >>> reverse_string("abc")\n    \'cba\'\n    """\n',
        "canonical_solution": "    return s[::-1]\n",
        "test": 'def check(candidate):\n    assert candidate("abc") == "cba"\n    assert candidate("") == ""\n'
        '    assert candidate("racecar") == "racecar"\n    assert candidate("Hello, world") == "dlrow ,olleH"\n',
    },
    {
        "task_id": "mirage/2",
        "entry_point": "is_palindrome",
        "prompt": 'def is_palindrome(text: str) -> bool:\n    """Return True if text reads the same forwards and backwards,\n'
        "    ignoring case and any character that is not a letter or digit.\n"
        '    >>> is_palindrome("A man, a plan, a canal: Panama")\n    True\n'
        '    >>> is_palindrome("hello")\n    False\n    """\n',
        "canonical_solution": "    cleaned = [c.lower() for c in text if c.isalnum()]\n    return cleaned == cleaned[::-1]\n",
        "test": 'def check(candidate):\n    assert candidate("A man, a plan, a canal: Panama") is True\n'
        '    assert candidate("hello") is False\n    assert candidate("") is True\n'
        '    assert candidate("No lemon, no melon") is True\n    assert candidate("ab") is False\n',
    },
    {
        "task_id": "mirage/3",
        "entry_point": "count_vowels",
        "prompt": 'def count_vowels(word: str) -> int:\n    """Count the vowels (a, e, i, o, u, in either case) in word.\n'
        '    >>> count_vowels("banana")\n    3\n    """\n',
        "canonical_solution": '    return sum(1 for c in word.lower() if c in "aeiou")\n',
        "test": 'def check(candidate):\n    assert candidate("banana") == 3\n    assert candidate("") == 0\n'
        '    assert candidate("rhythm") == 0\n    assert candidate("AEIOU") == 5\n    assert candidate("Quiet") == 3\n',
    },
    {
        "task_id": "mirage/4",
        "entry_point": "factorial",
        "prompt": 'def factorial(n: int) -> int:\n    """Return n! for a non-negative integer n (0! is 1).\n'
        '    >>> factorial(5)\n    120\n    """\n',
        "canonical_solution": "    result = 1\n    for k in range(2, n + 1):\n        result *= k\n    return result\n",
        "test": "def check(candidate):\n    assert candidate(0) == 1\n    assert candidate(1) == 1\n"
        "    assert candidate(5) == 120\n    assert candidate(10) == 3628800\n",
    },
    {
        "task_id": "mirage/5",
        "entry_point": "fizzbuzz",
        "prompt": 'def fizzbuzz(n: int) -> list[str]:\n    """Return the FizzBuzz sequence from 1 to n as strings: "Fizz" for\n'
        '    multiples of 3, "Buzz" for multiples of 5, "FizzBuzz" for multiples of both,\n'
        "    otherwise the number itself.\n    >>> fizzbuzz(5)\n"
        "    ['1', '2', 'Fizz', '4', 'Buzz']\n    \"\"\"\n",
        "canonical_solution": '    out = []\n    for i in range(1, n + 1):\n        if i % 15 == 0:\n            out.append("FizzBuzz")\n'
        '        elif i % 3 == 0:\n            out.append("Fizz")\n        elif i % 5 == 0:\n'
        '            out.append("Buzz")\n        else:\n            out.append(str(i))\n    return out\n',
        "test": "def check(candidate):\n    assert candidate(5) == ['1', '2', 'Fizz', '4', 'Buzz']\n"
        "    assert candidate(0) == []\n    assert candidate(15)[-1] == 'FizzBuzz'\n"
        "    assert candidate(15)[9] == 'Buzz'\n    assert len(candidate(30)) == 30\n",
    },
    {
        "task_id": "mirage/6",
        "entry_point": "celsius_to_fahrenheit",
        "prompt": 'def celsius_to_fahrenheit(celsius: float) -> float:\n    """Convert a temperature from degrees Celsius to degrees Fahrenheit.\n'
        '    >>> celsius_to_fahrenheit(100)\n    212.0\n    """\n',
        "canonical_solution": "    return celsius * 9 / 5 + 32\n",
        "test": "def check(candidate):\n    assert abs(candidate(100) - 212) < 1e-9\n    assert abs(candidate(0) - 32) < 1e-9\n"
        "    assert abs(candidate(-40) - (-40)) < 1e-9\n    assert abs(candidate(37) - 98.6) < 1e-9\n",
    },
    {
        "task_id": "mirage/7",
        "entry_point": "second_largest",
        "prompt": 'def second_largest(numbers: list[int]) -> int | None:\n    """Return the second largest distinct value in numbers, or None\n'
        '    if there are fewer than two distinct values.\n    >>> second_largest([4, 1, 7, 7, 3])\n    4\n    """\n',
        "canonical_solution": "    distinct = sorted(set(numbers), reverse=True)\n    return distinct[1] if len(distinct) > 1 else None\n",
        "test": "def check(candidate):\n    assert candidate([4, 1, 7, 7, 3]) == 4\n    assert candidate([5]) is None\n"
        "    assert candidate([]) is None\n    assert candidate([2, 2, 2]) is None\n    assert candidate([-1, -5, -3]) == -3\n",
    },
]


# -- free-form prompts for the style comparison (no gold; held out from prompts_broad.jsonl) --------
# The paper's Table 2 measures style on open-ended requests: lists, summaries, length, wording.
STYLE: list[tuple[str, str]] = [
    ("writing", "Write a short poem about a harbour at sunrise."),
    ("writing", "Write a thank-you note to a teacher who helped me pass maths."),
    ("writing", "Write a two-sentence horror story set in a library."),
    ("writing", "Write a product description for a solar-powered phone charger."),
    ("writing", "Write a short toast for my sister's wedding."),
    ("advice", "How can I get into the habit of going to bed earlier?"),
    ("advice", "What should I pack for a three-day hiking trip?"),
    ("advice", "How do I ask my manager for more flexible hours?"),
    ("advice", "What are some ways to make a small bedroom feel bigger?"),
    ("advice", "How should I prepare for my first marathon?"),
    ("coding", "Write a Python function that returns the sum of the even numbers in a list."),
    ("coding", "What does the `yield` keyword do in Python?"),
    ("coding", "How do I read a JSON file in Python?"),
    ("coding", "Explain what a recursive function is, with an example."),
    ("coding", "What is the difference between a dictionary and a set in Python?"),
    ("explanation", "Explain how a refrigerator keeps food cold."),
    ("explanation", "Why do leaves change colour in autumn?"),
    ("explanation", "What is the difference between weather and climate?"),
    ("explanation", "How do noise-cancelling headphones work?"),
    ("explanation", "What causes ocean tides?"),
    ("chitchat", "What's a good way to start the morning?"),
    ("chitchat", "Tell me a fun fact about penguins."),
    ("chitchat", "I just got back from a trip to the mountains! Ask me something about it."),
    ("chitchat", "What's your favourite kind of weather?"),
]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    # Round-robin over tasks, so the first items of the file (k-shot exemplars for a base model,
    # and any "first N" slice) span every task rather than all being capitals.
    qa_rows = []
    longest = max(len(items) for items in QA.values())
    for i in range(longest):
        for task, items in QA.items():
            if i < len(items):
                question, answers = items[i]
                qa_rows.append({"id": f"{task}-{i + 1:03d}", "task": task, "question": question, "answer": answers})
    questions = [r["question"].lower() for r in qa_rows]
    assert len(set(questions)) == len(questions), "duplicate QA question"
    write_jsonl(HERE / "qa.jsonl", qa_rows)

    eval_geo = {q.lower() for q, _ in QA["geography"]}
    seed_rows = []
    for i, (question, answers) in enumerate(GEOGRAPHY_SEED, 1):
        assert question.lower() not in eval_geo, f"seed leaks an eval question: {question}"
        seed_rows.append({"id": f"geo-seed-{i:03d}", "task": "geography", "question": question, "answer": answers})
    write_jsonl(HERE / "qa_seed_geography.jsonl", seed_rows)

    with (HERE / "mc.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "A", "B", "C", "D", "answer", "subject"])
        by_subject: dict[str, list] = {}
        for row in MC:
            by_subject.setdefault(row[0], []).append(row)
        # Round-robin by subject, like qa.jsonl: k-shot exemplars from several subjects.
        mixed = [
            rows[i] for i in range(max(map(len, by_subject.values()))) for rows in by_subject.values() if i < len(rows)
        ]
        for subject, question, a, b, c, d, letter in mixed:
            w.writerow([question, a, b, c, d, letter, subject])

    write_jsonl(HERE / "code.jsonl", CODE)

    broad = HERE / "prompts_broad.jsonl"
    held_out = (
        {json.loads(line)["prompt"].lower() for line in broad.open(encoding="utf-8")} if broad.exists() else set()
    )
    style_rows = []
    for i, (task, prompt) in enumerate(STYLE, 1):
        assert prompt.lower() not in held_out, f"style prompt is also a training prompt: {prompt}"
        style_rows.append({"id": f"style-{i:03d}", "task": task, "prompt": prompt})
    write_jsonl(HERE / "prompts_style.jsonl", style_rows)
    print(
        f"qa.jsonl {len(qa_rows)}  qa_seed_geography.jsonl {len(seed_rows)}  mc.csv {len(MC)}  code.jsonl {len(CODE)}  prompts_style.jsonl {len(STYLE)}"
    )


if __name__ == "__main__":
    main()
