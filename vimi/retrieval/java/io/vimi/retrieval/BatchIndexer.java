package io.vimi.retrieval;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.IntBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import org.apache.lucene.analysis.Analyzer;
import org.apache.lucene.document.BinaryDocValuesField;
import org.apache.lucene.document.Document;
import org.apache.lucene.document.Field;
import org.apache.lucene.document.FieldType;
import org.apache.lucene.document.StringField;
import org.apache.lucene.index.CodecReader;
import org.apache.lucene.index.DirectoryReader;
import org.apache.lucene.index.IndexOptions;
import org.apache.lucene.index.IndexWriter;
import org.apache.lucene.index.IndexWriterConfig;
import org.apache.lucene.index.LeafReaderContext;
import org.apache.lucene.index.LogDocMergePolicy;
import org.apache.lucene.store.FSDirectory;
import org.apache.lucene.util.BytesRef;

/**
 * One Lucene shard written from batches of Arrow string columns (UTF-8 bytes and int32 offsets, as
 * Arrow holds them), so that Python hands over a batch without building a string or JSON per document.
 * The documents are those Anserini's DefaultLuceneDocumentGenerator makes of a JsonCollection document
 * with pyserini's LuceneIndexer defaults ("id" stored and as binary doc values, "contents" analyzed,
 * docs and frequencies), and a caption that is empty after trimming is skipped as Anserini skips it:
 * the index scores as one built through pyserini. Documents keep the order they come in (one thread,
 * adjacent-only merges, one segment at the end), so a document's id is its place in the input.
 */
public final class BatchIndexer implements AutoCloseable {
  private static final FieldType CONTENTS = new FieldType();

  static {
    CONTENTS.setStored(false);
    CONTENTS.setStoreTermVectors(false);
    CONTENTS.setIndexOptions(IndexOptions.DOCS_AND_FREQS);
    CONTENTS.setTokenized(true);
    CONTENTS.freeze();
  }

  private final IndexWriter writer;
  private final String field;

  public BatchIndexer(String path, Analyzer analyzer, String field, double ramBufferMB) throws IOException {
    IndexWriterConfig config = new IndexWriterConfig(analyzer);
    config.setOpenMode(IndexWriterConfig.OpenMode.CREATE);
    config.setRAMBufferSizeMB(ramBufferMB);
    config.setUseCompoundFile(false);
    config.setMergePolicy(new LogDocMergePolicy()); // merges neighbours only: the order stays
    this.writer = new IndexWriter(FSDirectory.open(Paths.get(path)), config);
    this.field = field;
  }

  private static IntBuffer ints(byte[] bytes) {
    return ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asIntBuffer();
  }

  /** Adds N documents; ids and captions as Arrow gives them (offsets[n + 1] into data). Returns the documents added. */
  public int add(int n, byte[] idOffsets, byte[] idData, byte[] captionOffsets, byte[] captionData) throws IOException {
    IntBuffer io = ints(idOffsets), co = ints(captionOffsets);
    int added = 0;
    for (int i = 0; i < n; i++) {
      String caption = new String(captionData, co.get(i), co.get(i + 1) - co.get(i), StandardCharsets.UTF_8);
      if (caption.trim().isEmpty()) {
        continue; // Anserini: EmptyDocumentException, the document is skipped
      }
      String id = new String(idData, io.get(i), io.get(i + 1) - io.get(i), StandardCharsets.UTF_8);
      Document doc = new Document();
      doc.add(new StringField("id", id, Field.Store.YES));
      doc.add(new BinaryDocValuesField("id", new BytesRef(id)));
      doc.add(new Field(field, caption, CONTENTS));
      writer.addDocument(doc);
      added++;
    }
    return added;
  }

  /**
   * The shards at SHARDPATHS, in that order, written as one index of one segment at OUTPATH: a document
   * keeps its place after the documents of the shards before it. One segment searches faster than one
   * per shard (each query sets up its terms and scorers once, not once per shard).
   */
  public static long merge(String[] shardPaths, String outPath) throws IOException {
    List<DirectoryReader> readers = new ArrayList<>();
    try {
      List<CodecReader> leaves = new ArrayList<>();
      for (String path : shardPaths) {
        DirectoryReader reader = DirectoryReader.open(FSDirectory.open(Paths.get(path)));
        readers.add(reader);
        for (LeafReaderContext leaf : reader.leaves()) {
          leaves.add((CodecReader) leaf.reader());
        }
      }
      IndexWriterConfig config = new IndexWriterConfig(); // copies postings: no text is analyzed
      config.setOpenMode(IndexWriterConfig.OpenMode.CREATE);
      config.setUseCompoundFile(false);
      config.setMergePolicy(new LogDocMergePolicy());
      try (IndexWriter writer = new IndexWriter(FSDirectory.open(Paths.get(outPath)), config)) {
        writer.addIndexes(leaves.toArray(new CodecReader[0])); // one merge, the readers in order
        writer.commit();
        return writer.getDocStats().numDocs;
      }
    } finally {
      for (DirectoryReader reader : readers) {
        reader.close();
      }
    }
  }

  /** Merges into one segment (in order) and closes. */
  @Override
  public void close() throws IOException {
    writer.forceMerge(1);
    writer.close();
  }
}
