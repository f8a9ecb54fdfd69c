"""SASRec: the ID-based sequential peer of the generator (report row, CF vectors, reward)."""
