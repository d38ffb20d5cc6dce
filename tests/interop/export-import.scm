;;; export-import.scm -- export-paths and import-paths: signed and unsigned
;;; exports taken apart and checked byte by byte, imports of bundles the
;;; daemon made and of bundles made here (new items with references and
;;; derivers, several items at once), and every way an import is refused:
;;; no signature, a key nobody authorized, a bad signature, corrupt
;;; contents, bad markers, a truncated stream, references that are not
;;; valid.

(load (string-append (dirname (current-filename)) "/common.scm"))
(use-modules (guix derivations)
             (guix pki)
             (gcrypt pk-crypto))

(define s (connect))

;;; Keys: the daemon's own pair (authorized in its ACL) and a stranger's.

(define (read-sexp-file file)
  (string->canonical-sexp (call-with-input-file file get-string-all)))

(define (key-pair dir)
  (cons (read-sexp-file (string-append dir "/signing-key.pub"))
        (read-sexp-file (string-append dir "/signing-key.sec"))))

(define own-key (key-pair (string-append (keys-dir) "/own")))
(define stranger-key (key-pair (string-append (keys-dir) "/stranger")))

(define (signature-string key bytes)
  "The signature, as the daemon embeds it, of BYTES with KEY."
  (canonical-sexp->string
   (signature-sexp (bytevector->hash-data (sha256 bytes)
                                          #:key-type (key-type (car key)))
                   (find-sexp-token (cdr key) 'private-key)
                   (car key))))

;;; Bundles.
;;;
;;; An item is (PATH NAR-BYTES REFERENCES DERIVER SIGNATURE) where SIGNATURE
;;; is #f, a key pair (sign the item with it), or a string used as is.

(define (item-bytes path nar refs deriver)
  "The signed part of an exported item: NAR through deriver."
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (put-bytevector port nar)
      (write-int #x4558494e port)
      (write-string path port)
      (write-string-list refs port)
      (write-string deriver port)
      (get))))

(define (bundle items)
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (for-each (match-lambda
                  ((path nar refs deriver signature)
                   (let ((signed (item-bytes path nar refs deriver)))
                     (write-long-long 1 port)
                     (put-bytevector port signed)
                     (match signature
                       (#f (write-int 0 port))
                       ((? string? str) (write-int 1 port)
                        (write-string str port))
                       (key (write-int 1 port)
                            (write-string (signature-string key signed)
                                          port))))))
                items)
      (write-long-long 0 port)
      (get))))

(define (parse-bundle bv)
  "Take an export bundle apart: a list of alists with the item's path,
references, deriver, NAR bytes, signed bytes and signature (or #f)."
  (define port (open-bytevector-input-port bv))
  (define (read-nar)
    ;; Copy the NAR through a parse of it, to know where it ends.
    (call-with-values open-bytevector-output-port
      (lambda (out get)
        (let ((start (port-position port)))
          (fold-archive (lambda (file type contents result)
                          ;; Regular contents must be read by the caller.
                          (match contents
                            ((p . size) (get-bytevector-n p size))
                            (_ #f))
                          result)
                        #t port "x")
          (let ((end (port-position port)))
            (set-port-position! port start)
            (put-bytevector out (get-bytevector-n port (- end start)))
            (get))))))
  (let loop ((items '()))
    (match (read-long-long port)
      (0 (reverse items))
      (1 (let* ((start (port-position port))
                (nar (read-nar))
                (magic (read-int port))
                (path (read-string port))
                (refs (read-string-list port))
                (deriver (read-string port))
                (end (port-position port))
                (signed? (= 1 (read-int port)))
                (signature (and signed? (read-string port))))
           (loop (cons `((path . ,path) (magic . ,magic)
                         (references . ,refs) (deriver . ,deriver)
                         (nar . ,nar)
                         (signed . ,(bytevector-slice bv start (- end start)))
                         (signature . ,signature))
                       items))))
      (n (error "bad bundle marker" n)))))

(define (bytevector-search bv pattern)
  "The index of the first occurrence of PATTERN in BV."
  (let ((n (bytevector-length pattern)))
    (let loop ((i 0))
      (cond ((> (+ i n) (bytevector-length bv)) (error "not found" pattern))
            ((bytevector=? (bytevector-slice bv i n) pattern) i)
            (else (loop (+ i 1)))))))

(define (bytevector-slice bv start len)
  (let ((out (make-bytevector len)))
    (bytevector-copy! bv start out 0 len)
    out))

(define (export-bytes store paths sign? . rest)
  (call-with-values open-bytevector-output-port
    (lambda (port get)
      (apply export-paths store paths port #:sign? sign? rest)
      (get))))

(define (import-bytes store bv)
  (import-paths store (open-bytevector-input-port bv)))

(define (bundle->json bv)
  `(("size" . ,(bytevector-length bv))
    ("sha256" . ,(hex (sha256 bv)))
    ("items"
     . ,(list->vector
         (map (lambda (item)
                `(("path" . ,(assq-ref item 'path))
                  ("references" . ,(list->vector (assq-ref item 'references)))
                  ("deriver" . ,(assq-ref item 'deriver))
                  ("nar_sha256" . ,(hex (sha256 (assq-ref item 'nar))))
                  ("signature" . ,(or (assq-ref item 'signature) 'null))))
              (parse-bundle bv))))))

(define (check-bundle! label bv store signed?)
  "Check every item of BV against the client's view of the store."
  (for-each
   (lambda (item)
     (let ((path (assq-ref item 'path))
           (sig (assq-ref item 'signature)))
       (check! (string-append label ": magic of " path)
               (= (assq-ref item 'magic) #x4558494e))
       (check! (string-append label ": NAR of " path)
               (bytevector=? (assq-ref item 'nar) (nar-bytes path)))
       (check! (string-append label ": references of " path)
               (equal? (assq-ref item 'references) (references store path)))
       (check! (string-append label ": signed? " path)
               (eq? (and sig #t) signed?))
       (when sig
         (let ((sexp (string->canonical-sexp sig)))
           (check! (string-append label ": signature valid for " path)
                   (valid-signature? sexp))
           (check! (string-append label ": signed hash of " path)
                   (bytevector=? (hash-data->bytevector
                                  (signature-signed-data sexp))
                                 (sha256 (assq-ref item 'signed))))
           (check! (string-append label ": signer of " path)
                   (equal? (canonical-sexp->sexp (signature-subject sexp))
                           (canonical-sexp->sexp (car own-key))))))))
   (parse-bundle bv)))

;;; Items to export.

(define x (add-text-to-store s "x" "ex\n" '()))
(define y (add-text-to-store s "y" "why\n" (list x)))
(define tree
  (add-to-store s "tree" #t "sha256"
                (make-tree "tree"
                           `(directory
                             ("big" (regular ,(pattern-bytes (* 1536 1024) 9)))
                             ("bin" (directory
                                     ("run" (executable
                                             ,(string->utf8 "#!/bin/sh\n")))))
                             ("link" (symlink "bin/run"))))))

(define (export! label paths sign? . rest)
  (let ((bv (apply expect-ok! label
                   (lambda () (apply export-bytes s paths sign? rest))
                   (list #:encode bundle->json))))
    (when bv (check-bundle! label bv s sign?))
    bv))

(define signed-xy (export! "export x y, signed" (list y x) #t))
(define unsigned-xy (export! "export x y, unsigned" (list x y) #f))
(export! "export y recursively, signed" (list y) #t #:recursive? #t)
(define signed-tree (export! "export a large tree, signed" (list tree) #t))

(check! "export order is topological"
        (equal? (map (cut assq-ref <> 'path) (parse-bundle signed-xy))
                (list x y)))

(expect-error! "export an invalid path"
               (lambda () (export-bytes s (list %missing) #t))
               "is not valid")
(step-alive! "alive after export of an invalid path" s #t)

;;; Importing what is there already.

(check! "import of valid items"
        (equal? (expect-ok! "import x y again"
                            (lambda () (import-bytes s signed-xy))
                            #:encode paths->json)
                (list x y)))
(expect-ok! "import tree again" (lambda () (import-bytes s signed-tree))
            #:encode paths->json)

;;; Importing new items, from bundles made here.

(define (new-item name tree)
  "A new item, not in the store: its NAR and a path for it."
  (let ((nar (nar-bytes (make-tree name tree))))
    (values (fixed-output-path name (sha256 nar)) nar)))

(define drv-path
  ;; A valid `.drv' to name as a deriver.
  (derivation-file-name
   (derivation s "deriver" "/bin/sh" '() #:system "x86_64-linux")))

(define (imported! label items)
  "Import a bundle of ITEMS made here; record what the daemon says and the
imported items as they are afterwards."
  (let ((paths (expect-ok! label (lambda () (import-bytes s (bundle items)))
                           #:encode paths->json)))
    (when paths
      (check! (string-append label ": paths in stream order")
              (equal? paths (map car items)) paths)
      (for-each
       (match-lambda
         ((path nar refs deriver _)
          (let ((info (expect-ok! (string-append label ": " (basename path))
                                  (lambda () (query-path-info s path))
                                  #:encode path-info->json)))
            (when info
              (check-path-info! label info path)
              (check! (string-append label ": NAR of " path)
                      (bytevector=? nar (nar-bytes path)))
              (check! (string-append label ": references of " path)
                      (equal? (path-info-references info)
                              (sort refs string<?)))))
          (record! (string-append label ": files of " (basename path))
                   (listing path))))
       items))
    paths))

(define-values (a-path a-nar)
  (new-item "imported-a" `(directory
                           ("data" (regular ,(string->utf8 "a\n")))
                           ("exe" (executable ,(string->utf8 "#!/bin/sh\n")))
                           ("lnk" (symlink "data")))))
(define-values (b-path b-nar)
  (new-item "imported-b" `(regular ,(string->utf8 "b refers to a\n"))))
(define-values (c-path c-nar)
  (new-item "imported-c" `(regular ,(string->utf8 "c has a deriver\n"))))
(define-values (d-path d-nar)
  (new-item "imported-d" `(regular ,(string->utf8 "d's deriver is gone\n"))))

(define-values (e-path e-nar)
  (new-item "imported-e" `(regular ,(string->utf8 "e refers to itself\n"))))

(imported! "import new items, the second refers to the first"
           (list (list a-path a-nar (list x) "" own-key)
                 (list b-path b-nar (list a-path) "" own-key)))
(imported! "import an item that refers to itself"
           (list (list e-path e-nar (list e-path x) "" own-key)))
(imported! "import an item with a valid deriver"
           (list (list c-path c-nar '() drv-path own-key)))
(define (query-deriver store path)
  (raw-operation store 18
                 (lambda (p) (write-string path p))
                 read-string))
(check! "query-deriver of an imported item with a deriver"
        (equal? (expect-ok! "query-deriver of an imported item with a deriver"
                            (lambda () (query-deriver s c-path)))
                drv-path))
(imported! "import an item with an invalid deriver"
           (list (list d-path d-nar '() (in-store (string-append
                                                  (make-string 32 #\4)
                                                  "-gone.drv"))
                       own-key)))
;; A derivation: the daemon checks its output paths, as for
;; add-text-to-store, and records them.
(define (drv-text out)
  (string-append "Derive([(\"out\",\"" out "\",\"\",\"\")],"
                 "[],[],\"x86_64-linux\",\"/bin/sh\",[],"
                 "[(\"out\",\"" out "\")])"))
(define imported-drv-out
  ;; Without inputs, hashDerivationModulo is the hash of the text with the
  ;; output paths left empty.
  (output-path "out" (sha256 (string->utf8 (drv-text ""))) "imported"))
(define imported-drv-text (drv-text imported-drv-out))
(define imported-drv-path
  (text-store-path "imported.drv" imported-drv-text '()))
(define imported-drv-nar
  (nar-bytes (make-tree "imported.drv"
                        `(regular ,(string->utf8 imported-drv-text)))))
(imported! "import a derivation"
           (list (list imported-drv-path imported-drv-nar '() "" own-key)))
(expect-ok! "import a derivation: its outputs"
            (lambda () (query-derivation-outputs s imported-drv-path))
            #:encode paths->json)
(imported! "import a derivation again"
           (list (list imported-drv-path imported-drv-nar '() "" own-key)))

(export! "export imported items, signed"
         (list a-path b-path c-path d-path e-path) #t)

;;; Refused imports.  Each uses a new item, and afterwards that item must
;;; not be valid.

(define (refused-import! label name make-bundle expected)
  (let-values (((path nar) (new-item name `(regular ,(string->utf8 name)))))
    (expect-error! label (lambda () (import-bytes s (make-bundle path nar)))
                   expected)
    (check! (string-append label ": nothing imported")
            (not (valid-path? s path)))
    (step-alive! (string-append "alive after " label) s #t)))

(refused-import! "import without a signature" "unsigned"
                 (lambda (path nar) (bundle (list (list path nar '() "" #f))))
                 "lacks a signature")
(refused-import! "import signed by an unauthorized key" "stranger"
                 (lambda (path nar)
                   (bundle (list (list path nar '() "" stranger-key))))
                 "unauthorized public key")
(refused-import! "import with a signature that is not a signature" "garbage-sig"
                 (lambda (path nar)
                   (bundle (list (list path nar '() "" "(hello world)"))))
                 "signature")
(refused-import! "import with another item's signature" "other-sig"
                 (lambda (path nar)
                   (bundle (list (list path nar '() ""
                                       (signature-string own-key
                                                         (string->utf8 "other"))))))
                 "signed hash doesn't match")
(refused-import! "import with corrupt contents" "corrupt"
                 (lambda (path nar)
                   ;; Flip the first byte of the file's contents, which
                   ;; are its name and come before anything else that
                   ;; holds the name.
                   (let* ((bv (bundle (list (list path nar '() "" own-key))))
                          (i (bytevector-search bv (string->utf8 "corrupt"))))
                     (bytevector-u8-set! bv i (logxor #xff (bytevector-u8-ref bv i)))
                     bv))
                 "corrupt")
(refused-import! "import with a reference that is not valid" "dangling"
                 (lambda (path nar)
                   (bundle (list (list path nar (list %missing) "" own-key))))
                 "is not valid")
(refused-import! "import with a wrong item marker" "marker"
                 (lambda (path nar)
                   (let ((bv (bundle (list (list path nar '() "" own-key)))))
                     (bytevector-u8-set! bv 0 2)
                     bv))
                 "doesn't look like")
(refused-import! "import with a wrong export magic" "magic"
                 (lambda (path nar)
                   (let ((bv (bundle (list (list path nar '() "" own-key)))))
                     (bytevector-u8-set! bv (+ 8 (bytevector-length nar)) 0)
                     bv))
                 "wrong format")
(define (raw-import store bv)
  "Import BV by hand, answering the daemon's requests for data until BV is
exhausted and then with empty strings, which is how a stream ends on the
wire (the client library cannot send that)."
  (let ((s (store-connection-socket store))
        (in (open-bytevector-input-port bv)))
    (put-bytevector s (request-bytes 27 (const #t)))
    (force-output s)
    (let loop ()
      (let ((code (read-int s)))
        (cond ((= code #x64617461)              ;STDERR_READ
               (let ((chunk (get-bytevector-n in (read-int s))))
                 (write-bytevector (if (eof-object? chunk) #vu8() chunk) s)
                 (force-output s)
                 (loop)))
              ((= code #x6f6c6d67)              ;STDERR_NEXT
               (read-string s)
               (loop))
              ((= code #x63787470)              ;STDERR_ERROR
               (let* ((message (read-maybe-utf8-string s))
                      (status (read-int s)))
                 (raise (condition (&store-protocol-error
                                    (message message) (status status))))))
              ((= code #x616c7473)              ;STDERR_LAST
               (read-store-path-list s))
              (else (error "unexpected reply" code)))))))

(let-values (((path nar) (new-item "truncated" '(regular #vu8(1 2 3)))))
  (let ((c (connect))
        (bv (bundle (list (list path nar '() "" own-key)))))
    (expect-error! "import of a truncated stream"
                   (lambda ()
                     (raw-import c (bytevector-slice
                                    bv 0 (quotient (bytevector-length nar) 2))))
                   "end")
    (check! "import of a truncated stream: nothing imported"
            (not (valid-path? s path)))
    (record! "alive after import of a truncated stream" (alive? c))
    (check! "the same bundle, whole, by hand"
            (equal? (expect-ok! "import by hand of the whole bundle"
                                (lambda () (raw-import (connect) bv))
                                #:encode paths->json)
                    (list path)))))

;;; Only the first item of a bundle whose second item is refused.
(let-values (((p1 n1) (new-item "first-ok" '(regular #vu8(1))))
             ((p2 n2) (new-item "second-unsigned" '(regular #vu8(2)))))
  (step! "import of a bundle whose second item is unsigned"
         (lambda ()
           (import-bytes s (bundle (list (list p1 n1 '() "" own-key)
                                         (list p2 n2 '() "" #f))))))
  (record! "bundle with an unsigned second item: first item valid"
           (valid-path? s p1))
  (check! "bundle with an unsigned second item: second item not valid"
          (not (valid-path? s p2)))
  (step-alive! "alive after bundle with an unsigned second item" s #t))

(finish!)
