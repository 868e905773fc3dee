package io.vimi.retrieval;

import java.io.IOException;
import java.io.StringReader;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;
import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.analysis.TokenStream;
import org.apache.lucene.analysis.tokenattributes.CharTermAttribute;
import org.apache.lucene.index.Term;
import org.apache.lucene.search.BooleanClause;
import org.apache.lucene.search.BooleanQuery;
import org.apache.lucene.search.BoostQuery;
import org.apache.lucene.search.IndexSearcher;
import org.apache.lucene.search.Query;
import org.apache.lucene.search.ScoreDoc;
import org.apache.lucene.search.TermQuery;
import org.apache.lucene.search.TopScoreDocCollector;

/**
 * Top-k BM25 search of a whole batch of texts on Java threads, answered as one array of primitives, so
 * that Python pays one call per batch instead of one per query and per hit. The query of a text is
 * built as Anserini's BagOfWordsQueryGenerator builds it (its terms as AnalyzerUtils.analyze gives them,
 * counted in a HashMap, one boosted SHOULD clause per term in that map's order), truncated past Lucene's
 * clause limit and collected as vimi's per-query search does (vimi/retrieval/bm25.py): the hits are
 * the same. Only Lucene's classes are used, so that a Java 17 compiler builds it for Anserini's runtime.
 *
 * <p>The answer, little-endian: int32 counts[n], int32 docs[n*k], float32 scores[n*k], int8 truncated[n]
 * (row i's hits are docs[i*k .. i*k+counts[i]), best first; the rest is -1 and 0).
 */
public final class BatchSearcher {
  private static final int CHUNK = 32; // texts a thread takes at a time
  private final IndexSearcher searcher;
  private final Analyzer analyzer;
  private final String field;

  public BatchSearcher(IndexSearcher searcher, Analyzer analyzer, String field) {
    this.searcher = searcher;
    this.analyzer = analyzer;
    this.field = field;
  }

  public byte[] search(String[] texts, int k, int threads) throws Exception {
    int n = texts.length;
    int[] counts = new int[n];
    int[] docs = new int[n * k];
    float[] scores = new float[n * k];
    byte[] truncated = new byte[n];
    java.util.Arrays.fill(docs, -1);
    int parts = Math.max(1, Math.min(threads, n));
    ExecutorService pool = Executors.newFixedThreadPool(parts);
    try {
      // Threads take the next chunk of texts as they finish one, so none idles while another has a slow
      // tail (fixed halves left one core waiting at the end of every batch).
      AtomicInteger next = new AtomicInteger();
      List<Future<?>> done = new ArrayList<>();
      for (int p = 0; p < parts; p++) {
        done.add(pool.submit(() -> {
          for (int from = next.getAndAdd(CHUNK); from < n; from = next.getAndAdd(CHUNK)) {
            for (int i = from, to = Math.min(n, from + CHUNK); i < to; i++) {
              searchOne(texts[i], k, i, counts, docs, scores, truncated);
            }
          }
          return null;
        }));
      }
      for (Future<?> f : done) {
        f.get();
      }
    } finally {
      pool.shutdown();
    }
    ByteBuffer out = ByteBuffer.allocate(4 * n + 8 * n * k + n).order(ByteOrder.LITTLE_ENDIAN);
    out.asIntBuffer().put(counts);
    out.position(4 * n);
    out.slice().order(ByteOrder.LITTLE_ENDIAN).asIntBuffer().put(docs);
    out.position(4 * n + 4 * n * k);
    out.slice().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().put(scores);
    out.position(4 * n + 8 * n * k);
    out.put(truncated);
    return out.array();
  }

  private void searchOne(String text, int k, int i, int[] counts, int[] docs, float[] scores, byte[] truncated)
      throws Exception {
    if (text == null || text.isBlank()) {
      return;
    }
    List<String> terms = analyze(text);
    Query query;
    try {
      query = bagOfWords(terms);
    } catch (IndexSearcher.TooManyClauses e) {
      query = truncatedQuery(terms);
      truncated[i] = 1;
    }
    // Counting stops at k hits, so block-max WAND skips from the start.
    TopScoreDocCollector collector = TopScoreDocCollector.create(k, k);
    searcher.search(query, collector);
    ScoreDoc[] hits = collector.topDocs().scoreDocs;
    counts[i] = hits.length;
    for (int r = 0; r < hits.length; r++) {
      docs[i * k + r] = hits[r].doc;
      scores[i * k + r] = hits[r].score;
    }
  }

  /** The analyzed terms of a text, empty ones left out (AnalyzerUtils.analyze). */
  private List<String> analyze(String text) {
    List<String> terms = new ArrayList<>();
    try (TokenStream stream = analyzer.tokenStream(null, new StringReader(text))) {
      CharTermAttribute term = stream.addAttribute(CharTermAttribute.class);
      stream.reset();
      while (stream.incrementToken()) {
        if (term.length() > 0) {
          terms.add(term.toString());
        }
      }
      stream.end();
    } catch (IOException e) {
      throw new IllegalStateException(e);
    }
    return terms;
  }

  /** BagOfWordsQueryGenerator.buildQuery: each distinct term boosted by its count, SHOULD. */
  private Query bagOfWords(List<String> terms) {
    Map<String, Long> counts = new HashMap<>();
    for (String term : terms) {
      counts.merge(term, 1L, Long::sum);
    }
    BooleanQuery.Builder builder = new BooleanQuery.Builder();
    for (String term : counts.keySet()) {
      builder.add(new BoostQuery(new TermQuery(new Term(field, term)), (float) counts.get(term)), BooleanClause.Occur.SHOULD);
    }
    return builder.build();
  }

  /** The first distinct terms, as many as Lucene allows, each boosted by its count in the whole text. */
  private Query truncatedQuery(List<String> terms) {
    int limit = IndexSearcher.getMaxClauseCount();
    Map<String, Integer> counts = new LinkedHashMap<>();
    for (String term : terms) {
      if (counts.containsKey(term) || counts.size() < limit) {
        counts.merge(term, 1, Integer::sum);
      }
    }
    BooleanQuery.Builder builder = new BooleanQuery.Builder();
    for (Map.Entry<String, Integer> e : counts.entrySet()) {
      builder.add(
          new BoostQuery(new TermQuery(new Term(field, e.getKey())), (float) e.getValue()), BooleanClause.Occur.SHOULD);
    }
    return builder.build();
  }
}
