"""The images stage: photos downloaded, stored and decoded to the pixels every stage uses."""
