"""Real sentences for judging sentence-embedding models (MiniLM) after approximate passes.

SENTENCES (40, from a few words to a long paragraph, varied topics and styles)
are what accuracy is measured on; CALIBRATION (16, different sentences) is what
quantize-int8's SmoothQuant may calibrate on, so no sentence is both. `tokenize`
uses the tokenizer shipped with the real all-MiniLM-L6-v2 weights (offline).
"""

from __future__ import annotations

SENTENCES = [
    "Hello!",
    "The cat sat on the mat.",
    "Where is the nearest train station?",
    "I can't believe it's already December.",
    "Quantum computers exploit superposition and entanglement to solve certain problems faster.",
    "She sells seashells by the seashore.",
    "The stock market fell sharply after the central bank raised interest rates by half a point.",
    "Please remember to water the plants while I'm away next week.",
    "A neural network is a function approximator built from layers of simple units.",
    "The recipe calls for two cups of flour, a pinch of salt, and three eggs.",
    "Why do we dream?",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "My flight was delayed by four hours, so I missed the connection in Frankfurt.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "He played the violin beautifully at the concert last night.",
    "Error: the file could not be opened because it is being used by another process.",
    "The committee will review all applications and announce the results in March.",
    "Dogs are loyal companions and have lived alongside humans for thousands of years.",
    "To be, or not to be, that is the question.",
    "The new smartphone features a larger battery, a faster processor, and an improved camera system.",
    "Rainfall in the region has decreased by twenty percent over the past decade, threatening local agriculture.",
    "Can you recommend a good book on the history of mathematics?",
    "The patient was prescribed antibiotics for a bacterial infection of the upper respiratory tract.",
    "Our team won the championship after a dramatic overtime victory.",
    "Volcanoes form where magma from the Earth's mantle reaches the surface.",
    "I would like to cancel my subscription and request a refund for the last month.",
    "The museum's new exhibition explores the art of the Renaissance through paintings, sculptures and letters.",
    "Fresh bread smells wonderful in the morning.",
    "Compile the model, validate it against the reference, and ship the artifact.",
    "The bridge was closed for repairs, so traffic was diverted through the old town.",
    "Climate scientists warn that sea levels could rise by more than a meter by the end of the century "
    "if greenhouse gas emissions continue at their current pace, displacing millions of people in coastal cities.",
    "Honey never spoils; archaeologists have found edible honey in ancient Egyptian tombs.",
    "The algorithm sorts the list in place and runs in O(n log n) time on average.",
    "Thank you so much for your help yesterday, I really appreciate it.",
    "The children built a snowman in the garden and gave it a carrot for a nose.",
    "In 1969, Neil Armstrong became the first person to walk on the Moon.",
    "Is it going to rain tomorrow afternoon?",
    "The contract must be signed by both parties before the end of the fiscal year.",
    "Mount Everest, at 8,849 meters, is the highest mountain above sea level, and climbing it requires weeks "
    "of acclimatization, experienced guides, supplemental oxygen and a good deal of luck with the weather.",
    "Jazz musicians often improvise melodies over a repeating chord progression.",
]

CALIBRATION = [
    "The weather today is sunny with a light breeze from the west.",
    "Machine learning models need large amounts of labeled data.",
    "He opened the door and walked into the dark room.",
    "The restaurant serves traditional dishes from northern Italy.",
    "Our quarterly revenue increased by twelve percent compared to last year.",
    "Please submit your assignment before Friday at noon.",
    "The river flows through three countries before reaching the sea.",
    "She studied medicine at the university and became a surgeon.",
    "What time does the library open on Sundays?",
    "The software update fixes several security vulnerabilities.",
    "Birds migrate south in the autumn to find warmer climates.",
    "The orchestra rehearsed the symphony for weeks before the premiere.",
    "Electric cars are becoming cheaper as battery technology improves.",
    "I lost my keys somewhere between the office and the parking lot.",
    "The ancient city was buried under volcanic ash for centuries.",
    "Good morning, how can I help you?",
]


def tokenize(sentences: list[str]) -> list[list[int]]:
    """Token ids of each sentence ([CLS] ... [SEP]), with the tokenizer shipped beside the real MiniLM weights."""
    import transformers

    import zoo

    tok = transformers.AutoTokenizer.from_pretrained(zoo.minilm_folder(), local_files_only=True)
    return [tok(s)["input_ids"] for s in sentences]
