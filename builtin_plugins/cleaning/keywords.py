"""Default keyword maps of the ``tag`` transform. Order matters for tasks: the first task with a matching
keyword wins. ``^word`` matches only as the instruction's first word (after "please", "can you", ...).
Domains are scored by keyword hits over the whole conversation; ties go to the earlier domain."""

from __future__ import annotations

TASK_KEYWORDS: dict[str, list[str]] = {
    "translation": ["translate", "translation", "into english", "into french", "into spanish", "into german",
                    "into chinese", "into japanese", "into italian", "into portuguese", "into russian"],
    "summarization": ["summarize", "summarise", "summary", "summarization", "tl dr", "condense", "key points",
                      "in one sentence"],
    "classification": ["classify", "categorize", "categorise", "classification", "sentiment", "which category",
                       "label the", "spam or", "positive or negative", "true or false"],
    "extraction": ["extract", "find all", "list all the", "pull out", "named entities", "^identify"],
    "rewriting": ["rewrite", "paraphrase", "rephrase", "proofread", "^edit", "^correct", "fix the grammar",
                  "^simplify", "^shorten", "more formal", "more concise"],
    "code": ["code", "function", "program", "script", "python", "javascript", "java", "sql", "regex",
             "algorithm", "debug", "implement", "bash", "html"],
    "math": ["calculate", "compute", "solve", "equation", "arithmetic", "multiply", "divide", "square root",
             "integral", "derivative", "probability", "percent"],
    "creative-writing": ["poem", "story", "haiku", "lyrics", "song", "limerick", "fiction", "fairy tale",
                         "slogan", "tagline", "joke", "^compose"],
    "brainstorming": ["brainstorm", "ideas", "suggest", "come up with", "^propose", "^recommend", "tips"],
    "question-answering": ["^what", "^who", "^when", "^where", "^why", "^how", "^which", "^is", "^are",
                           "^does", "^do", "^can", "^explain", "^describe", "^define", "^tell"],
    "generation": ["^write", "^generate", "^create", "^draft", "^produce", "^make", "^give", "^list", "^name",
                   "^provide", "^design", "^plan", "^outline"],
}

DOMAIN_KEYWORDS: dict[str, list[str]] = {
    "programming": ["code", "function", "python", "javascript", "java", "sql", "database", "api", "algorithm",
                    "variable", "compile", "bug", "software", "programming", "regex", "html", "css", "git"],
    "math": ["equation", "integer", "number", "sum", "calculate", "algebra", "geometry", "probability",
             "fraction", "percent", "multiply", "divide", "triangle", "prime", "derivative", "integral"],
    "science": ["physics", "chemistry", "biology", "atom", "molecule", "cell", "energy", "planet", "gravity",
                "experiment", "species", "evolution", "climate", "photosynthesis", "dna"],
    "health": ["health", "doctor", "disease", "symptom", "medicine", "medical", "patient", "diet", "exercise",
               "sleep", "vitamin", "nutrition", "therapy", "mental health"],
    "business": ["business", "company", "market", "marketing", "customer", "sales", "revenue", "startup",
                 "product", "brand", "manager", "employee", "strategy", "invoice"],
    "finance": ["finance", "money", "investment", "invest", "stock", "bank", "loan", "budget", "tax",
                "interest rate", "savings", "credit", "price", "cost"],
    "law": ["law", "legal", "court", "contract", "lawyer", "rights", "regulation", "judge", "lawsuit"],
    "education": ["student", "teacher", "school", "learn", "lesson", "university", "exam", "homework",
                  "course", "study"],
    "technology": ["computer", "internet", "smartphone", "device", "technology", "ai", "machine learning",
                   "robot", "data", "network", "cloud"],
    "language": ["grammar", "sentence", "word", "synonym", "antonym", "translate", "spelling", "verb", "noun",
                 "adjective", "french", "spanish", "german", "english"],
    "travel": ["travel", "trip", "hotel", "flight", "vacation", "tourist", "city", "country", "visit"],
    "food": ["food", "recipe", "cook", "cooking", "restaurant", "meal", "ingredient", "bake", "dish"],
    "sports": ["sport", "football", "soccer", "basketball", "tennis", "team", "game", "player", "match"],
    "arts": ["music", "song", "poem", "novel", "story", "painting", "art", "film", "movie", "book", "artist"],
    "history": ["history", "historical", "war", "ancient", "century", "empire", "revolution", "president"],
}
