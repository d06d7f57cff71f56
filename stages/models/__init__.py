"""The networks of the tutorials, one file each: the network, its tensor shapes, its export.

- ``dense_net.py``: tutorials 01-03, the small fully connected net (simple_nn, metrics_demo,
  save_restore);
- ``emotion_cnn.py``: tutorial 07, the CNN of seven facial expressions, its SavedModel taking
  raw pixels, and integrated gradients to explain it (train_emotion_cnn);
- ``sentiment_rnn.py``: tutorial 08, the embedding + LSTM / GRU sentiment network read at each
  review's last real token, its SavedModel with the vocabulary, and its recurrent states
  (train_sentiment_rnn);
- ``sentiment_ngram.py``: beside tutorial 08, the n-gram baseline: NB-weighted logistic regression
  over each review's distinct unigrams and hashed bigrams (train_sentiment_ngram);
- ``load_rnn.py``: tutorial 09, the LSTM forecasting the next day's 24 hourly loads
  (train_load_rnn).

The stages (``stages/<stage>.py``) hold the params, the data, the training wiring, the
evaluation and the plots, and call these builders with their params' fields.
"""
