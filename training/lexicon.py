"""Word lists for the synthetic demo corpus.

Every entry is a single word, so the word-level tokenizer gives each one exactly one token (and one
more for the space-prefixed form, GPT-2 style). Names never coincide with any other capitalised word
of the corpus (countries, capitals, languages, sentence openers), so a name token always means a
person; `corpus.vocabulary` asserts this.
"""

from __future__ import annotations

# The lists stay packed, many entries to a line: one per line would make this file five times
# as long and no easier to read.
# fmt: off

# A few hundred of the most common English first names (US Social Security lists, recent decades).
NAMES: tuple[str, ...] = (
    # male
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Christopher", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul",
    "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward",
    "Jason", "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen",
    "Larry", "Justin", "Scott", "Brandon", "Benjamin", "Samuel", "Gregory", "Alexander", "Frank",
    "Patrick", "Raymond", "Jack", "Dennis", "Jerry", "Tyler", "Aaron", "Jose", "Adam", "Nathan",
    "Henry", "Douglas", "Zachary", "Peter", "Kyle", "Ethan", "Walter", "Noah", "Jeremy",
    "Christian", "Keith", "Roger", "Terry", "Gerald", "Harold", "Sean", "Austin", "Carl",
    "Arthur", "Lawrence", "Dylan", "Jesse", "Bryan", "Billy", "Joe", "Bruce", "Gabriel", "Logan",
    "Albert", "Willie", "Alan", "Juan", "Wayne", "Elijah", "Randy", "Roy", "Vincent", "Ralph",
    "Eugene", "Russell", "Bobby", "Mason", "Philip", "Louis", "Harry", "Howard", "Fred", "Martin",
    "Oliver", "Lucas", "Luke", "Isaac", "Owen", "Caleb", "Connor", "Evan", "Ian", "Hunter",
    "Liam", "Max", "Leo", "Jake", "Alex", "Tom", "Tim", "Sam", "Ben", "Dan", "Mike", "Nick",
    "Joel", "Victor", "Oscar", "Simon", "Neil", "Colin", "Derek", "Travis", "Shane", "Troy",
    "Marcus", "Dean", "Leon", "Grant", "Hugo", "Felix", "Theo", "Jasper", "Miles", "Edwin",
    "Adrian", "Ivan", "Carlos", "Dominic", "Julian", "Blake", "Seth", "Trevor",
    # female
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Lisa", "Nancy", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily",
    "Donna", "Michelle", "Carol", "Amanda", "Dorothy", "Melissa", "Deborah", "Stephanie",
    "Rebecca", "Sharon", "Laura", "Cynthia", "Kathleen", "Amy", "Angela", "Shirley", "Anna",
    "Brenda", "Pamela", "Emma", "Nicole", "Helen", "Samantha", "Katherine", "Christine", "Debra",
    "Rachel", "Carolyn", "Janet", "Catherine", "Maria", "Heather", "Diane", "Ruth", "Julie",
    "Olivia", "Joyce", "Virginia", "Victoria", "Kelly", "Lauren", "Christina", "Joan", "Evelyn",
    "Judith", "Megan", "Andrea", "Cheryl", "Hannah", "Jacqueline", "Martha", "Gloria", "Teresa",
    "Ann", "Sara", "Madison", "Frances", "Kathryn", "Janice", "Jean", "Abigail", "Alice", "Judy",
    "Sophia", "Julia", "Marie", "Denise", "Amber", "Doris", "Marilyn", "Danielle", "Beverly",
    "Isabella", "Theresa", "Diana", "Natalie", "Brittany", "Charlotte", "Rose", "Alexis",
    "Kayla", "Lucy", "Ella", "Chloe", "Grace", "Zoe", "Lily", "Mia", "Ava", "Harper", "Ellie",
    "Nora", "Claire", "Alicia", "Vanessa", "Erin", "Tiffany", "Monica", "Wendy", "Holly",
    "Jenny", "Kate", "Jane", "Molly", "Sophie", "Rosa", "Eva", "Ruby", "Iris", "Stella", "Paula",
    "Tina", "Vera", "Irene", "Clara", "Leah", "Naomi", "Caroline", "Fiona", "Lydia", "Phoebe",
    "Gina", "Heidi", "Wanda", "Sylvia", "Tessa", "Nina", "Maya", "Lila",
)

PLACES: tuple[str, ...] = (
    "store", "park", "school", "office", "restaurant", "station", "library", "hospital", "market",
    "beach", "garden", "cafe", "museum", "bank", "church", "theater", "hotel", "airport", "gym",
    "bakery", "farm", "zoo", "mall", "kitchen", "house", "party", "concert", "stadium", "pool",
    "river", "lake", "cinema", "shop", "club", "studio", "harbor", "bridge", "square", "castle",
    "village",
)

OBJECTS: tuple[str, ...] = (
    "drink", "book", "ball", "gift", "letter", "bag", "key", "ring", "flower", "cake", "pen",
    "phone", "hat", "bottle", "basket", "box", "card", "map", "ticket", "coin", "necklace", "toy",
    "sandwich", "cup", "plate", "kite", "lamp", "camera", "watch", "scarf", "blanket", "towel",
    "guitar", "apple", "orange", "umbrella", "envelope", "egg", "pencil", "candle",
)

# Words for the repeated-sequence (induction) pattern: plain lowercase words, no names.
SEQUENCE_WORDS: tuple[str, ...] = (
    "red", "blue", "green", "yellow", "black", "white", "purple", "brown", "silver", "golden",
    "tiger", "lion", "horse", "rabbit", "eagle", "snake", "whale", "mouse", "wolf", "bear",
    "mountain", "ocean", "forest", "desert", "island", "valley", "cloud", "storm", "thunder",
    "rain", "stone", "glass", "paper", "metal", "wood", "sand", "fire", "water", "ice", "wind",
    "window", "door", "table", "chair", "mirror", "clock", "piano", "engine", "wheel", "rocket",
    "bread", "cheese", "honey", "pepper", "salt", "sugar", "lemon", "grape", "cherry", "banana",
    "happy", "quiet", "bright", "slow", "fast", "heavy", "soft", "sharp", "round", "tall",
    "north", "south", "east", "west", "winter", "spring", "autumn", "summer", "morning", "night",
    "king", "queen", "doctor", "farmer", "soldier", "teacher", "painter", "sailor", "pilot",
    "poet", "circle", "square", "number", "letter", "music", "story", "dream", "shadow", "light",
    "garden",
)

# (country, capital, language): single-word names only, for the simple-fact pattern.
FACTS: tuple[tuple[str, str, str], ...] = (
    ("France", "Paris", "French"), ("Germany", "Berlin", "German"), ("Italy", "Rome", "Italian"),
    ("Spain", "Madrid", "Spanish"), ("Japan", "Tokyo", "Japanese"), ("China", "Beijing", "Chinese"),
    ("Russia", "Moscow", "Russian"), ("Egypt", "Cairo", "Arabic"), ("Greece", "Athens", "Greek"),
    ("Portugal", "Lisbon", "Portuguese"), ("Poland", "Warsaw", "Polish"),
    ("Austria", "Vienna", "German"), ("Ireland", "Dublin", "English"),
    ("Norway", "Oslo", "Norwegian"), ("Sweden", "Stockholm", "Swedish"),
    ("Finland", "Helsinki", "Finnish"), ("Denmark", "Copenhagen", "Danish"),
    ("Hungary", "Budapest", "Hungarian"), ("Canada", "Ottawa", "English"),
    ("Kenya", "Nairobi", "Swahili"), ("Peru", "Lima", "Spanish"), ("Cuba", "Havana", "Spanish"),
    ("Thailand", "Bangkok", "Thai"), ("Iran", "Tehran", "Persian"), ("Turkey", "Ankara", "Turkish"),
    ("Netherlands", "Amsterdam", "Dutch"), ("Australia", "Canberra", "English"),
    ("Vietnam", "Hanoi", "Vietnamese"), ("Indonesia", "Jakarta", "Indonesian"),
    ("Ukraine", "Kyiv", "Ukrainian"), ("Romania", "Bucharest", "Romanian"),
    ("Brazil", "Brasilia", "Portuguese"), ("Chile", "Santiago", "Spanish"),
    ("Korea", "Seoul", "Korean"), ("Czechia", "Prague", "Czech"),
    ("Iceland", "Reykjavik", "Icelandic"),
)
